/** Base class of every lock failure, so callers can catch them as one family. */
export abstract class LockError extends Error {
  constructor(
    message: string,
    readonly key: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The lock stayed taken for the whole wait timeout (or, for tryAcquire, was taken at once). */
export class LockNotAcquiredError extends LockError {
  override readonly name = 'LockNotAcquiredError';

  constructor(
    key: string,
    readonly waitedMs: number,
    /** Remaining lease of the holder when we gave up, if known: a hint for Retry-After. */
    readonly holderTtlMs?: number,
  ) {
    super(`lock ${key} not acquired within ${waitedMs} ms`, key);
  }
}

/** The lease ended while we believed we held it: expired, force-released or taken over. */
export class LockLostError extends LockError {
  override readonly name = 'LockLostError';

  constructor(key: string, reason: string) {
    super(`lock ${key} lost: ${reason}`, key);
  }
}

/** The lock backend (Redis) could not be reached or answered with an error. */
export class LockBackendError extends LockError {
  override readonly name = 'LockBackendError';

  constructor(key: string, cause: unknown) {
    super(
      `lock backend unavailable for ${key}: ${cause instanceof Error ? cause.message : String(cause)}`,
      key,
      { cause },
    );
  }
}

/** A fenced write carried a token older than one already recorded: a newer holder exists. */
export class StaleFenceError extends LockError {
  override readonly name = 'StaleFenceError';

  constructor(
    key: string,
    readonly fence: number,
  ) {
    super(`fencing token ${fence} for ${key} is stale: a newer holder has written`, key);
  }
}

/**
 * A force-release aimed at the holder with `expectedFence` found another holder (fence
 * `currentFence`) in its place: the lock changed hands since the operator looked, so nothing
 * was removed.
 */
export class LockHolderChangedError extends LockError {
  override readonly name = 'LockHolderChangedError';

  constructor(
    key: string,
    readonly expectedFence: number,
    readonly currentFence: number,
  ) {
    super(
      `lock ${key} is now held by the holder with fencing token ${currentFence}, not ${expectedFence}`,
      key,
    );
  }
}
