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
 */
export const Idempotent = (options: IdempotentMetadata): MethodDecorator =>
  SetMetadata(IDEMPOTENT_METADATA, options);
