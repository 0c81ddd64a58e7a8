/** The idempotency store (Redis) could not be reached or answered with an error. */
export class IdempotencyBackendError extends Error {
  override readonly name = 'IdempotencyBackendError';

  constructor(
    readonly key: string,
    cause: unknown,
  ) {
    super(
      `idempotency store unavailable for ${key}: ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}

/** A worker's result cannot be cached because it is not plain JSON. */
export class IdempotencyResultError extends Error {
  override readonly name = 'IdempotencyResultError';
}

/** A key or config that singleflight refuses (a programming error, not a request error). */
export class IdempotencyUsageError extends Error {
  override readonly name = 'IdempotencyUsageError';
}
