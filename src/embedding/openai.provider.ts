import { setTimeout as delay } from 'node:timers/promises';
import { Logger } from '@nestjs/common';
import { EmbedOptions, EmbeddingError, EmbeddingProvider } from './embedding.types';

export interface OpenAiProviderOptions {
  /** Base URL; requests go to `${url}/v1/embeddings` unless it already ends with /embeddings. */
  url: string;
  model: string;
  dimension: number;
  apiKey?: string;
  batchSize: number;
  timeoutMs: number;
  maxRetries: number;
}

interface EmbeddingsResponse {
  data?: { index?: number; embedding?: unknown }[];
}

/**
 * An OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, TEI, Ollama, LocalAI …). Batches
 * inputs; retries 429 and 5xx answers and network errors with exponential backoff (honouring
 * Retry-After); checks every returned vector's length against the configured dimension.
 */
export class OpenAiEmbeddingProvider implements EmbeddingProvider {
  private readonly logger = new Logger('OpenAiEmbeddingProvider');
  private readonly endpoint: string;

  constructor(private readonly options: OpenAiProviderOptions) {
    const base = options.url.replace(/\/+$/, '');
    this.endpoint = base.endsWith('/embeddings') ? base : `${base}/v1/embeddings`;
  }

  get model(): string {
    return this.options.model;
  }

  get dimension(): number {
    return this.options.dimension;
  }

  async embed(texts: string[], { signal }: EmbedOptions = {}): Promise<number[][]> {
    const vectors: number[][] = [];
    for (let start = 0; start < texts.length; start += this.options.batchSize) {
      const batch = texts.slice(start, start + this.options.batchSize);
      vectors.push(...(await this.embedBatch(batch, signal)));
    }
    return vectors;
  }

  private async embedBatch(input: string[], signal?: AbortSignal): Promise<number[][]> {
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted();
      let retryAfterMs: number | undefined;
      let failure: string;
      try {
        const response = await fetch(this.endpoint, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            ...(this.options.apiKey ? { authorization: `Bearer ${this.options.apiKey}` } : {}),
          },
          body: JSON.stringify({ model: this.options.model, input }),
          signal: signal
            ? AbortSignal.any([signal, AbortSignal.timeout(this.options.timeoutMs)])
            : AbortSignal.timeout(this.options.timeoutMs),
        });
        if (response.ok)
          return this.parse((await response.json()) as EmbeddingsResponse, input.length);
        failure = `HTTP ${response.status}`;
        if (response.status !== 429 && response.status < 500) {
          throw new EmbeddingError(`embedding request refused: ${failure}`);
        }
        const header = Number(response.headers.get('retry-after'));
        if (Number.isFinite(header) && header > 0) retryAfterMs = Math.min(header * 1000, 30_000);
      } catch (error) {
        if (error instanceof EmbeddingError) throw error;
        // The caller gave up: its reason, not a provider failure, and no retry.
        signal?.throwIfAborted();
        failure = error instanceof Error ? error.message : String(error);
      }
      if (attempt >= this.options.maxRetries) {
        throw new EmbeddingError(
          `embedding request failed after ${attempt + 1} attempts: ${failure}`,
        );
      }
      const backoff = retryAfterMs ?? 200 * 2 ** attempt * (0.5 + Math.random() / 2);
      this.logger.warn(
        `embedding request failed (${failure}); retrying in ${Math.round(backoff)} ms`,
      );
      await delay(backoff, undefined, { signal });
    }
  }

  private parse(body: EmbeddingsResponse, expected: number): number[][] {
    const data = body.data;
    if (!Array.isArray(data) || data.length !== expected) {
      throw new EmbeddingError(
        `embedding response has ${data?.length ?? 'no'} vectors, expected ${expected}`,
      );
    }
    const ordered = [...data].sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
    return ordered.map(({ embedding }) => {
      if (
        !Array.isArray(embedding) ||
        embedding.length !== this.options.dimension ||
        !embedding.every((value) => typeof value === 'number' && Number.isFinite(value))
      ) {
        throw new EmbeddingError(
          `embedding response holds a vector that is not ${this.options.dimension} finite numbers`,
        );
      }
      return embedding as number[];
    });
  }
}
