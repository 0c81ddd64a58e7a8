/** Who holds a lock, as recorded beside it in the backend. */
export interface LockHolder {
  instanceId: string;
  pid: number;
  /** The operation that took the lock (e.g. a method name), for operators. */
  operation?: string;
  /** Epoch milliseconds. */
  acquiredAt: number;
}

export interface AcquireOptions {
  /** Lease length in ms; the default comes from the module options. */
  ttlMs?: number;
  /** How long to wait for a taken lock; 0 means try once. */
  waitTimeoutMs?: number;
  /** Shown in status() as the holder's operation. */
  operation?: string;
  /** Serve waiters of this key in arrival order (ticket queue). */
  fair?: boolean;
  /** Cancels the wait (not the lease once held). */
  signal?: AbortSignal;
}

export interface WithLockOptions extends AcquireOptions {
  /** Renew the lease every ttl/3 while the callback runs (default true). */
  renew?: boolean;
}

export interface LockHandle {
  readonly key: string;
  /** Random owner token: only the holder of this value may extend or release. */
  readonly token: string;
  /** Fencing token: strictly increasing per key across all holders. */
  readonly fence: number;
  /** Aborted (with a LockLostError) once the lease can no longer be guaranteed. */
  readonly signal: AbortSignal;
  /** True until the lease is released or can no longer be guaranteed (then `signal` aborts). */
  readonly held: boolean;
  /**
   * Resets the lease to `ttlMs` (default: the current TTL), a whole number of ms up to 2^31-1.
   * Throws LockLostError if not held.
   */
  extend(ttlMs?: number): Promise<void>;
  /**
   * Releases if still held; true when this call removed the lock. Never throws for a lost lock;
   * throws LockBackendError when the backend fails, and the handle can then be released again
   * (renewals stop either way).
   */
  release(): Promise<boolean>;
  /**
   * Proves the lock is still held and moves its fence above `atLeast` (a fence recorded
   * elsewhere, e.g. by PostgresFencing after Redis lost its counter): the new fence, which
   * `fence` returns from then on; null (and the handle counts as lost) when no longer held.
   */
  raiseFence(atLeast: number): Promise<number | null>;
}

/** Several keys held together (acquireMany); fences per key. */
export interface MultiLockHandle {
  readonly keys: readonly string[];
  readonly token: string;
  readonly fences: Readonly<Record<string, number>>;
  readonly signal: AbortSignal;
  extend(ttlMs?: number): Promise<void>;
  release(): Promise<boolean>;
}

export interface LockStatus {
  key: string;
  locked: boolean;
  /** Remaining lease in ms, from the backend; null when free. */
  ttlMs: number | null;
  holder: LockHolder | null;
  /** Last fencing token handed out for this key (0 if never taken). */
  fence: number;
}

export interface ForceReleaseResult {
  key: string;
  released: boolean;
  previousHolder: LockHolder | null;
  /** The fence after the bump: writes fenced below this are rejected. */
  fence: number;
}
