/** Per-call settings, named as in the seed's IdempotencyConfig. */
export interface IdempotencyConfig {
  /** What kind of operation this is (metrics label; a key used under two scopes is refused). */
  scope: string;
  /** How long a completed result is kept and replayed (seconds). */
  ttl_seconds?: number;
  /** Lease of an in-progress record (seconds); the leader renews it while the worker runs. */
  in_progress_ttl?: number;
  /** How long a follower waits for the leader's result before a `timeout` outcome (ms). */
  wait_timeout_ms?: number;
  /** Followers re-read the record at least this often, should a notification be lost (ms). */
  poll_interval_ms?: number;
  /** Ignore a cached result and run again (still never two workers at once for one key). */
  force?: boolean;
}

/** What is stored under an idempotency key. */
export type IdempotencyRecord =
  | {
      status: 'in_progress';
      scope: string;
      owner: string;
      started_at: number;
      fingerprint?: string;
    }
  | {
      status: 'done';
      scope: string;
      owner: string;
      started_at: number;
      completed_at: number;
      fingerprint?: string;
      /** The worker's result, JSON-encoded. */
      result: string;
    };

/** How singleflight ended for this caller. */
export type SingleflightOutcome<T> =
  | {
      status: 'done';
      result: T;
      /** False for the one caller whose worker produced the result. */
      replayed: boolean;
    }
  | {
      /** The leader was still working when the wait timeout ran out; ask again later. */
      status: 'timeout';
      waitedMs: number;
    };

export interface WorkerContext {
  /**
   * Aborted (reason: IdempotencyLeaseLostError) once this run loses its lease: a renewal found
   * the record taken over or gone, or none succeeded before it would expire. Also available as
   * `IdempotencyService.currentSignal()`.
   */
  signal: AbortSignal;
}
