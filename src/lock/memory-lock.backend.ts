import {
  AimedForceRelease,
  AttemptResult,
  EncodedHolder,
  FORCED_RELEASE_MEMORY_MS,
  LockBackend,
  assertFence,
  decodeLockValue,
  encodeLockValue,
} from './lock-backend';
import { ForceReleaseResult, LockStatus } from './lock.types';

interface Entry {
  value: string;
  expiresAt: number;
}

interface Waiter {
  token: string;
  seenAt: number;
}

/** The last force-release of a key, remembered so that repeating it changes nothing. */
interface ForcedRelease {
  holderFence: number;
  result: ForceReleaseResult;
  until: number;
}

/**
 * Single-process lock store with the Redis backend's semantics (leases, fences, fair queue).
 * For tests and single-instance deployments only: it gives no exclusion across processes.
 */
export class MemoryLockBackend implements LockBackend {
  readonly kind = 'memory';
  private readonly locks = new Map<string, Entry>();
  private readonly fences = new Map<string, number>();
  private readonly queues = new Map<string, Waiter[]>();
  private readonly forced = new Map<string, ForcedRelease>();
  private readonly listeners = new Set<(key: string) => void>();

  tryAcquire(
    keys: string[],
    token: string,
    ttlMs: number,
    holder: EncodedHolder,
    _willWait: boolean,
  ): Promise<AttemptResult> {
    for (const key of keys) {
      const entry = this.live(key);
      if (!entry) continue;
      if (ownedBy(entry, token) && this.heldBy(keys, token)) return this.retaken(keys);
      return Promise.resolve({ acquired: false, holderTtlMs: this.ttlOf(entry) });
    }
    return Promise.resolve({
      acquired: true,
      fences: keys.map((key) => this.take(key, token, ttlMs, holder)),
    });
  }

  tryAcquireFair(
    key: string,
    token: string,
    ttlMs: number,
    holder: EncodedHolder,
    staleMs: number,
  ): Promise<AttemptResult> {
    if (this.heldBy([key], token)) return this.retaken([key]);
    const now = Date.now();
    const queue = this.queues.get(key) ?? [];
    this.queues.set(key, queue);
    const me = queue.find((waiter) => waiter.token === token);
    if (me) me.seenAt = now;
    else queue.push({ token, seenAt: now });
    while (queue[0].token !== token && now - queue[0].seenAt > staleMs) queue.shift();
    const entry = this.live(key);
    if (queue[0].token !== token || entry) {
      return Promise.resolve({ acquired: false, holderTtlMs: entry ? this.ttlOf(entry) : null });
    }
    queue.shift();
    if (queue.length === 0) this.queues.delete(key);
    return Promise.resolve({ acquired: true, fences: [this.take(key, token, ttlMs, holder)] });
  }

  leaveQueue(key: string, token: string): Promise<void> {
    const queue = this.queues.get(key);
    if (queue) {
      const rest = queue.filter((waiter) => waiter.token !== token);
      if (rest.length > 0) this.queues.set(key, rest);
      else this.queues.delete(key);
    }
    return Promise.resolve();
  }

  extend(keys: string[], token: string, ttlMs: number): Promise<boolean> {
    const entries = keys.map((key) => this.live(key));
    if (entries.some((entry) => !entry || !ownedBy(entry, token))) return Promise.resolve(false);
    for (const entry of entries) entry!.expiresAt = Date.now() + ttlMs;
    return Promise.resolve(true);
  }

  /** Every release is announced here (in-process, free), so waiters need not ask for it. */
  release(keys: string[], token: string): Promise<number> {
    let released = 0;
    for (const key of keys) {
      const entry = this.live(key);
      if (entry && ownedBy(entry, token)) {
        this.locks.delete(key);
        released++;
        this.announce(key);
      }
    }
    return Promise.resolve(released);
  }

  status(key: string): Promise<LockStatus> {
    const entry = this.live(key);
    return Promise.resolve({
      key,
      locked: entry !== undefined,
      ttlMs: entry ? this.ttlOf(entry) : null,
      holder: entry ? decodeLockValue(entry.value) : null,
      fence: this.fences.get(key) ?? 0,
    });
  }

  forceRelease(key: string, holderFence: number): Promise<AimedForceRelease> {
    const forced = this.forced.get(key);
    if (forced && forced.until > Date.now() && forced.holderFence === holderFence) {
      return Promise.resolve({ ...forced.result, holderChanged: false });
    }
    const entry = this.live(key);
    const fence = this.fences.get(key) ?? 0;
    if (!entry) {
      return Promise.resolve({
        key,
        released: false,
        previousHolder: null,
        fence,
        holderChanged: false,
      });
    }
    if (fence !== holderFence) {
      return Promise.resolve({
        key,
        released: false,
        previousHolder: null,
        fence,
        holderChanged: true,
        holder: decodeLockValue(entry.value),
      });
    }
    this.locks.delete(key);
    const result = {
      key,
      released: true,
      previousHolder: decodeLockValue(entry.value),
      fence: this.bumpFence(key),
    };
    this.forced.set(key, { holderFence, result, until: Date.now() + FORCED_RELEASE_MEMORY_MS });
    this.announce(key);
    return Promise.resolve({ ...result, holderChanged: false });
  }

  onRelease(listener: (key: string | null) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  raiseFence(key: string, token: string, atLeast: number): Promise<number | null> {
    assertFence(atLeast);
    const entry = this.live(key);
    if (!entry || !ownedBy(entry, token)) return Promise.resolve(null);
    this.fences.set(key, Math.max(this.fences.get(key) ?? 0, atLeast));
    return Promise.resolve(this.bumpFence(key));
  }

  close(): Promise<void> {
    this.listeners.clear();
    return Promise.resolve();
  }

  private take(key: string, token: string, ttlMs: number, holder: EncodedHolder): number {
    this.locks.set(key, { value: encodeLockValue(token, holder), expiresAt: Date.now() + ttlMs });
    return this.bumpFence(key);
  }

  /** Every key still held by `token`: a retry of an attempt that took them. */
  private heldBy(keys: string[], token: string): boolean {
    return keys.every((key) => {
      const entry = this.live(key);
      return entry !== undefined && ownedBy(entry, token);
    });
  }

  /** The answer of the attempt that took them, with the fences it issued. */
  private retaken(keys: string[]): Promise<AttemptResult> {
    return Promise.resolve({ acquired: true, fences: keys.map((key) => this.fences.get(key)!) });
  }

  private bumpFence(key: string): number {
    const fence = (this.fences.get(key) ?? 0) + 1;
    this.fences.set(key, fence);
    return fence;
  }

  /** The entry if its lease has not run out; expired entries are dropped lazily, as Redis does. */
  private live(key: string): Entry | undefined {
    const entry = this.locks.get(key);
    if (entry && entry.expiresAt <= Date.now()) {
      this.locks.delete(key);
      return undefined;
    }
    return entry;
  }

  private ttlOf(entry: Entry): number {
    return Math.max(0, entry.expiresAt - Date.now());
  }

  private announce(key: string): void {
    // Asynchronously, as a pub/sub message would arrive: never inside the releaser's call.
    queueMicrotask(() => {
      for (const listener of this.listeners) listener(key);
    });
  }
}

function ownedBy(entry: Entry, token: string): boolean {
  return entry.value.startsWith(`${token}:`);
}
