import { Counter, Histogram, Registry } from 'prom-client';
import { EmbedOptions, EmbeddingProvider } from './embedding.types';

/**
 * The configured provider, counted and timed: one `embed` call is one request here (the OpenAI
 * provider may send it as several HTTP requests of EMBEDDING_BATCH_SIZE texts, with retries).
 * Labels are the provider kind and the model, both from configuration.
 */
export class MeteredEmbeddingProvider implements EmbeddingProvider {
  private readonly requests: Counter<'provider' | 'model' | 'outcome'>;
  private readonly duration: Histogram<'provider' | 'model'>;
  private readonly texts: Counter<'provider' | 'model'>;

  constructor(
    private readonly inner: EmbeddingProvider,
    private readonly provider: string,
    registry: Registry,
  ) {
    const registers = [registry];
    this.requests = new Counter({
      name: 'embedding_requests_total',
      help: 'Embedding requests by provider, model and outcome (success, error, aborted).',
      labelNames: ['provider', 'model', 'outcome'] as const,
      registers,
    });
    this.duration = new Histogram({
      name: 'embedding_request_duration_seconds',
      help: 'Embedding request latency, retries included, by provider and model.',
      labelNames: ['provider', 'model'] as const,
      buckets: [0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.texts = new Counter({
      name: 'embedding_texts_total',
      help: 'Texts sent for embedding by provider and model.',
      labelNames: ['provider', 'model'] as const,
      registers,
    });
  }

  get model(): string {
    return this.inner.model;
  }

  get dimension(): number {
    return this.inner.dimension;
  }

  async embed(texts: string[], options?: EmbedOptions): Promise<number[][]> {
    const labels = { provider: this.provider, model: this.inner.model };
    const started = performance.now();
    let outcome = 'error';
    try {
      const vectors = await this.inner.embed(texts, options);
      outcome = 'success';
      return vectors;
    } catch (error) {
      if (options?.signal?.aborted) outcome = 'aborted';
      throw error;
    } finally {
      this.texts.inc(labels, texts.length);
      this.requests.inc({ ...labels, outcome });
      this.duration.observe(labels, (performance.now() - started) / 1000);
    }
  }
}
