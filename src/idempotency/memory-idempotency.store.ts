import { BeginResult, IdempotencyStore } from './idempotency-store';
import { IdempotencyRecord } from './idempotency.types';

interface Entry {
  record: IdempotencyRecord;
  expiresAt: number;
}

/** Single-process idempotency store with the Redis store's semantics (tests, one instance). */
export class MemoryIdempotencyStore implements IdempotencyStore {
  readonly kind = 'memory';
  private readonly entries = new Map<string, Entry>();
  private readonly listeners = new Set<(key: string) => void>();

  begin(
    key: string,
    record: IdempotencyRecord,
    leaseMs: number,
    force: boolean,
  ): Promise<BeginResult> {
    const current = this.live(key);
    if (current && !(force && current.record.status === 'done')) {
      return Promise.resolve({ leader: false, record: clone(current.record) });
    }
    this.entries.set(key, { record: clone(record), expiresAt: Date.now() + leaseMs });
    return Promise.resolve({ leader: true });
  }

  heartbeat(key: string, owner: string, leaseMs: number): Promise<boolean> {
    const current = this.leading(key, owner);
    if (current) current.expiresAt = Date.now() + leaseMs;
    return Promise.resolve(current !== undefined);
  }

  complete(key: string, owner: string, record: IdempotencyRecord, ttlMs: number): Promise<boolean> {
    if (!this.leading(key, owner)) return Promise.resolve(false);
    this.entries.set(key, { record: clone(record), expiresAt: Date.now() + ttlMs });
    this.announce(key);
    return Promise.resolve(true);
  }

  abandon(key: string, owner: string): Promise<boolean> {
    if (!this.leading(key, owner)) return Promise.resolve(false);
    this.entries.delete(key);
    this.announce(key);
    return Promise.resolve(true);
  }

  forgetResult(key: string): Promise<boolean> {
    const current = this.live(key);
    if (!current || current.record.status === 'in_progress') return Promise.resolve(false);
    this.entries.delete(key);
    return Promise.resolve(true);
  }

  get(key: string): Promise<IdempotencyRecord | null> {
    const current = this.live(key);
    return Promise.resolve(current ? clone(current.record) : null);
  }

  onSettled(listener: (key: string) => void): Promise<() => void> {
    this.listeners.add(listener);
    return Promise.resolve(() => this.listeners.delete(listener));
  }

  close(): Promise<void> {
    this.listeners.clear();
    return Promise.resolve();
  }

  private leading(key: string, owner: string): Entry | undefined {
    const current = this.live(key);
    return current?.record.status === 'in_progress' && current.record.owner === owner
      ? current
      : undefined;
  }

  private live(key: string): Entry | undefined {
    const entry = this.entries.get(key);
    if (entry && entry.expiresAt <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  private announce(key: string): void {
    queueMicrotask(() => {
      for (const listener of this.listeners) listener(key);
    });
  }
}

const clone = (record: IdempotencyRecord): IdempotencyRecord => ({ ...record });
