import { IdempotencyRecord } from './idempotency.types';

export type BeginResult = { leader: true } | { leader: false; record: IdempotencyRecord };

/**
 * Atomic record operations behind IdempotencyService; Redis and memory implement it and pass one
 * contract suite. Every write after `begin` is owner-checked, so a stale leader changes nothing.
 */
export interface IdempotencyStore {
  readonly kind: 'redis' | 'memory';

  /**
   * Becomes leader by writing an in-progress record if the key is free — or, with `force`, if it
   * holds a completed result. Otherwise returns the current record.
   */
  begin(
    key: string,
    record: IdempotencyRecord,
    leaseMs: number,
    force: boolean,
  ): Promise<BeginResult>;

  /** Renews the in-progress lease if `owner` still leads. */
  heartbeat(key: string, owner: string, leaseMs: number): Promise<boolean>;

  /** Replaces `owner`'s in-progress record with the completed one, kept for `ttlMs`. */
  complete(key: string, owner: string, record: IdempotencyRecord, ttlMs: number): Promise<boolean>;

  /** Deletes `owner`'s in-progress record (the worker failed), so the next caller runs again. */
  abandon(key: string, owner: string): Promise<boolean>;

  /** Deletes a completed record (its result no longer holds); an in-progress one stays. */
  forgetResult(key: string): Promise<boolean>;

  get(key: string): Promise<IdempotencyRecord | null>;

  /**
   * Calls `listener` when a record is completed or abandoned. Resolves once notifications flow
   * (or could not be set up: callers poll anyway).
   */
  onSettled(listener: (key: string) => void): Promise<() => void>;

  close(): Promise<void>;
}

export function parseRecord(value: string | null): IdempotencyRecord | null {
  if (value === null) return null;
  try {
    return JSON.parse(value) as IdempotencyRecord;
  } catch {
    return null;
  }
}

/**
 * `store.begin`, and when it fails (a command timeout, a dropped connection) a best-effort
 * owner-checked abandon of the record it may have written all the same: a command that timed
 * out on the client can still run on the server, and its in-progress record, with nobody to
 * renew or complete it, would hold the key for a whole lease. Sent on the same connection right
 * behind the begin, the abandon runs after it.
 */
export async function beginOrClear(
  store: IdempotencyStore,
  key: string,
  record: Extract<IdempotencyRecord, { status: 'in_progress' }>,
  leaseMs: number,
  force: boolean,
): Promise<BeginResult> {
  try {
    return await store.begin(key, record, leaseMs, force);
  } catch (error) {
    store.abandon(key, record.owner).catch(() => undefined);
    throw error;
  }
}
