import { ForceReleaseResult, LockHolder, LockStatus } from './lock.types';

/** Outcome of one attempt: the fences of the keys taken, or the holder's remaining lease. */
export type AttemptResult =
  { acquired: true; fences: number[] } | { acquired: false; holderTtlMs: number | null };

/** A force-release aimed at one holder: done (or nobody held it), or someone else holds it now. */
export type AimedForceRelease =
  | (ForceReleaseResult & { holderChanged: false })
  | (ForceReleaseResult & { holderChanged: true; holder: LockHolder | null });

/** How long a backend remembers a force-release, so that repeating it changes nothing. */
export const FORCED_RELEASE_MEMORY_MS = 10 * 60_000;

/**
 * What a lock store must do, atomically per call. LockService builds waiting, leases, the
 * watchdog and metrics on top; Redis and memory implement this and pass one contract suite.
 */
export interface LockBackend {
  readonly kind: 'redis' | 'memory';

  /**
   * Takes every key (all or none) for `ttlMs`, bumping each key's fence. A caller that
   * `willWait` on failure asks to be woken when the lock that stopped it is released.
   * Idempotent per token: finding the keys already held by `token` (a retry after a lost
   * reply) is success, with the fences they were taken with.
   */
  tryAcquire(
    keys: string[],
    token: string,
    ttlMs: number,
    holder: EncodedHolder,
    willWait: boolean,
  ): Promise<AttemptResult>;

  /**
   * Fair variant for one key: joins the key's ticket queue (once) and takes the lock only when
   * first in line. Waiters not seen for `staleMs` are dropped from the head of the queue.
   * Idempotent per token, as tryAcquire.
   */
  tryAcquireFair(
    key: string,
    token: string,
    ttlMs: number,
    holder: EncodedHolder,
    staleMs: number,
  ): Promise<AttemptResult>;

  /** Leaves the fair queue (a waiter that gave up). */
  leaveQueue(key: string, token: string): Promise<void>;

  /** Resets the lease of every key still held by `token`; false if any is no longer ours. */
  extend(keys: string[], token: string, ttlMs: number): Promise<boolean>;

  /** Removes the keys still held by `token`; returns how many were removed. */
  release(keys: string[], token: string): Promise<number>;

  status(key: string): Promise<LockStatus>;

  /**
   * Removes the lock if its holder is the one with `holderFence`, and bumps its fence. Repeated
   * for the same fence, it answers as the first time and removes nobody (not the next holder).
   */
  forceRelease(key: string, holderFence: number): Promise<AimedForceRelease>;

  /**
   * If `token` still holds `key`, sets its fence counter to at least `atLeast` and bumps it:
   * the new fence, above `atLeast`. Null when the lock is no longer held by `token`.
   */
  raiseFence(key: string, token: string, atLeast: number): Promise<number | null>;

  /**
   * Calls `listener` with the key when a lock is released (best effort: waiters still poll),
   * and with null when releases may have gone unseen: the notification channel has just been
   * (re)established, so every waiter should look again.
   */
  onRelease(listener: (key: string | null) => void): () => void;

  close(): Promise<void>;
}

/** A fence to raise past must be a whole number that Lua and Postgres (bigint) read exactly. */
export function assertFence(fence: number): void {
  if (!Number.isSafeInteger(fence) || fence < 0) {
    throw new RangeError(`a fence must be a non-negative safe integer, got ${fence}`);
  }
}

/** A LockHolder as JSON, the form in which backends store it (see HolderEncoder). */
export type EncodedHolder = string;

/** Lock values are `<token>:<holder JSON>`, so one GET shows the holder and owner checks need no second key. */
export function encodeLockValue(token: string, holder: EncodedHolder): string {
  return `${token}:${holder}`;
}

/**
 * Encodes the holders of one instance. Only `acquiredAt` changes between acquisitions, so the
 * JSON before it is built once per operation: a JSON.stringify per acquire was a visible share
 * of an uncontended acquire + release.
 */
export class HolderEncoder {
  private readonly prefixes = new Map<string | undefined, string>();

  constructor(
    private readonly instanceId: string,
    private readonly pid: number,
  ) {}

  encode(operation: string | undefined, acquiredAt: number): EncodedHolder {
    let prefix = this.prefixes.get(operation);
    if (prefix === undefined) {
      const holder: LockHolder = {
        instanceId: this.instanceId,
        pid: this.pid,
        operation,
        acquiredAt: 0,
      };
      // `acquiredAt` is the last property: cut its value and the closing brace.
      prefix = JSON.stringify(holder).slice(0, -'0}'.length);
      this.prefixes.set(operation, prefix);
    }
    return `${prefix}${acquiredAt}}`;
  }
}

export function decodeLockValue(value: string | null): LockHolder | null {
  if (value === null) return null;
  const separator = value.indexOf(':');
  // A trailing `!` marks a lock whose release waiters asked to hear of (see the Redis scripts).
  const end = value.endsWith('!') ? -1 : undefined;
  try {
    return JSON.parse(value.slice(separator + 1, end)) as LockHolder;
  } catch {
    return null;
  }
}
