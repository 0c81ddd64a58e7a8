import { Injectable, Optional } from '@nestjs/common';
import { Counter, Histogram, Registry } from 'prom-client';

export type SingleflightEvent =
  /** A cached result answered at once. */
  | 'hit'
  /** This caller led and ran the worker. */
  | 'miss'
  /** A follower waited and got the leader's result. */
  | 'wait'
  /** A follower found the leader gone and ran the worker itself. */
  | 'takeover'
  | 'timeout'
  | 'worker_error'
  /** A leader finished after losing its record: its result was refused, not stored. */
  | 'stale_completion'
  /** The result was larger than maxResultBytes: answered to its caller, not stored. */
  | 'not_stored';

export type HttpIdempotencyEvent =
  /** A response was stored for its key. */
  | 'stored'
  /** A stored response was sent again. */
  | 'replayed'
  /** The status is one a retry may change (408, 409, 425, 429, 5xx, …): the key was released. */
  | 'released'
  /** The response was larger than maxResultBytes (or a stream): sent, not stored, key released. */
  | 'not_stored'
  /** The request lost its record to another before its response was stored: refused. */
  | 'stale_completion';

@Injectable()
export class IdempotencyMetrics {
  readonly events: Counter<'scope' | 'event'>;
  readonly followerWaitSeconds: Histogram<'scope'>;
  readonly httpResponses: Counter<'event'>;

  constructor(@Optional() registry: Registry = new Registry()) {
    this.events = new Counter({
      name: 'idempotency_singleflight_total',
      help: 'Single-flight calls by outcome: hit, miss, wait, takeover, timeout, worker_error, stale_completion, not_stored.',
      labelNames: ['scope', 'event'] as const,
      registers: [registry],
    });
    this.followerWaitSeconds = new Histogram({
      name: 'idempotency_follower_wait_seconds',
      help: 'Time followers waited for a leader.',
      labelNames: ['scope'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers: [registry],
    });
    this.httpResponses = new Counter({
      name: 'idempotency_http_responses_total',
      help: 'Idempotency-Key responses by what became of them: stored, replayed, released, not_stored, stale_completion.',
      labelNames: ['event'] as const,
      registers: [registry],
    });
  }

  count(scope: string, event: SingleflightEvent): void {
    this.events.inc({ scope, event });
  }

  countHttp(event: HttpIdempotencyEvent): void {
    this.httpResponses.inc({ event });
  }
}
