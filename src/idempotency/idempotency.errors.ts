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

/**
 * A run of an idempotency key lost its lease (its in-progress record could not be renewed in
 * time, or another caller took the key over), so its own result is not the key's answer. Thrown
 * to that run's caller when no stored outcome exists to give instead; also the abort reason of
 * the run's signal. A retry gets the key's outcome (or runs again once the key is free).
 */
export class IdempotencyLeaseLostError extends Error {
  override readonly name = 'IdempotencyLeaseLostError';

  constructor(
    readonly key: string,
    reason: string,
    options?: ErrorOptions,
  ) {
    super(`the run of ${key} lost its lease: ${reason}`, options);
  }
}
