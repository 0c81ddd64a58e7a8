import type { Replica } from './replica-harness';

export interface ProbeSample {
  replica: number;
  probe: 'live' | 'ready';
  status: number;
  ms: number;
  /** Epoch ms when the probe was sent. */
  at: number;
}

/**
 * Polls every replica's liveness and readiness endpoints until stopped, remembering each
 * answer, so a test can assert what the probes said during a fault window.
 */
export class HealthMonitor {
  readonly samples: ProbeSample[] = [];
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    replicas: readonly Replica[],
    private readonly intervalMs = 100,
  ) {
    this.loop = Promise.all(replicas.map((replica) => this.poll(replica))).then(() => undefined);
  }

  async stop(): Promise<ProbeSample[]> {
    this.running = false;
    await this.loop;
    return this.samples;
  }

  between(from: number, to: number, probe: ProbeSample['probe']): ProbeSample[] {
    return this.samples.filter((s) => s.probe === probe && s.at >= from && s.at <= to);
  }

  private async poll(replica: Replica): Promise<void> {
    while (this.running) {
      for (const probe of ['live', 'ready'] as const) {
        const at = Date.now();
        const answer = await replica.get(`/health/${probe}`, { timeoutMs: 5_000 });
        this.samples.push({
          replica: replica.index,
          probe,
          status: answer.status,
          ms: answer.ms,
          at,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, this.intervalMs));
    }
  }
}
