import {
  InvalidLockKeyError,
  LockHolderChangedError,
  LockBackendError,
  LockLostError,
  LockNotAcquiredError,
  StaleFenceError,
} from '../lock';
import { EmbeddingError } from '../embedding/embedding.types';
import {
  IdempotencyBackendError,
  IdempotencyLeaseLostError,
} from '../idempotency/idempotency.errors';
import { isDatabaseUnavailable, isLockTimeout } from '../database/database-errors';
import { ShuttingDownError } from '../lifecycle/shutdown-state';

export interface KnownError {
  status: number;
  detail: string;
  retryAfterSeconds?: number;
}

/**
 * HTTP meaning of the errors that services throw on purpose. Lock contention is a 409 the client
 * may retry; an unreachable backend is a 503 (fail closed: nothing was written without a lock).
 */
export function knownError(error: unknown): KnownError | undefined {
  if (error instanceof LockNotAcquiredError) {
    return {
      status: 409,
      detail: `${error.message}; another operation holds it`,
      retryAfterSeconds: Math.max(1, Math.ceil((error.holderTtlMs ?? 1_000) / 1_000)),
    };
  }
  if (
    error instanceof LockLostError ||
    error instanceof StaleFenceError ||
    error instanceof LockHolderChangedError
  ) {
    return { status: 409, detail: error.message };
  }
  if (error instanceof LockBackendError) {
    return { status: 503, detail: 'The lock service is unavailable.', retryAfterSeconds: 1 };
  }
  if (error instanceof IdempotencyBackendError) {
    return { status: 503, detail: 'The idempotency store is unavailable.', retryAfterSeconds: 1 };
  }
  if (error instanceof IdempotencyLeaseLostError) {
    // This run's result is not the key's answer; a retry gets the stored one or runs again.
    return { status: 409, detail: `${error.message}. Retry.`, retryAfterSeconds: 1 };
  }
  if (error instanceof EmbeddingError) {
    // Nothing was written: embeddings are computed before the write transaction.
    return {
      status: 503,
      detail: `The embedding provider failed: ${error.message}`,
      retryAfterSeconds: 5,
    };
  }
  if (error instanceof InvalidLockKeyError) return { status: 400, detail: error.message };
  if (error instanceof ShuttingDownError) {
    return {
      status: 503,
      detail: 'This replica is shutting down; send the request again.',
      retryAfterSeconds: 1,
    };
  }
  if (isDatabaseUnavailable(error)) {
    // The transaction was rolled back with the connection: nothing was written.
    return { status: 503, detail: 'The database is unavailable.', retryAfterSeconds: 1 };
  }
  if (isLockTimeout(error)) {
    return { status: 409, detail: 'The data is busy; try again.', retryAfterSeconds: 1 };
  }
  return undefined;
}
