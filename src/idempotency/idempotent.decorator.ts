import { SetMetadata } from '@nestjs/common';

export const IDEMPOTENT_METADATA = 'idempotency:idempotent';

export interface IdempotentMetadata {
  /** Builds the idempotency key from the method's arguments, e.g. `(ns) => \`idem:x:${ns}\``. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arguments of any decorated method
  key: (...args: any[]) => string;
  scope: string;
  ttlSeconds?: number;
  inProgressTtl?: number;
  waitTimeoutMs?: number;
  pollIntervalMs?: number;
  /** Reads `force` from the arguments (e.g. `(ns, force) => force`). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arguments of any decorated method
  force?: (...args: any[]) => boolean;
}

/**
 * Runs the decorated provider method through IdempotencyService.singleflight: one execution per
 * key across replicas, others get its result. The method then resolves to the singleflight
 * outcome (`{ status: 'done', result, replayed } | { status: 'timeout', waitedMs }`), not the
 * bare result, so callers cannot mistake a wait timeout for a result.
 *
 * While the method runs as leader, `IdempotencyService.currentSignal()` returns an AbortSignal
 * that aborts (reason: IdempotencyLeaseLostError) when the run loses its lease; its result is
 * then not the key's answer (callers get the stored one, or that error), so long work should
 * stop. A result larger than the module's `maxResultBytes` is returned but not stored.
 */
export const Idempotent = (options: IdempotentMetadata): MethodDecorator =>
  SetMetadata(IDEMPOTENT_METADATA, options);
