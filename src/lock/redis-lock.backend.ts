import { LuaScript } from '../redis/lua-script';
import { subscriberFor } from '../redis/subscriber';
import { Logger } from '@nestjs/common';
import calculateSlot from 'cluster-key-slot';
import Redis, { Cluster } from 'ioredis';
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
import { LockBackendError } from './lock.errors';
import { siblingKey } from './lock-keys';
import { LockStatus } from './lock.types';
import {
  ACQUIRE,
  ACQUIRE_FAIR,
  EXTEND,
  FORCE_RELEASE,
  LEAVE_QUEUE,
  RAISE_FENCE,
  RELEASE,
} from './redis-lock.scripts';

export type RedisConnection = Redis | Cluster;

const SCRIPTS = {
  acquire: new LuaScript(ACQUIRE),
  acquireFair: new LuaScript(ACQUIRE_FAIR),
  leaveQueue: new LuaScript(LEAVE_QUEUE),
  extend: new LuaScript(EXTEND),
  release: new LuaScript(RELEASE),
  forceRelease: new LuaScript(FORCE_RELEASE),
  raiseFence: new LuaScript(RAISE_FENCE),
};

const fenceKey = (key: string) => siblingKey(key, 'fence');
const queueKey = (key: string) => siblingKey(key, 'queue');

// Lock keys repeat (one per resource), so the acquire script's keys are built once per lock
// key; a bound keeps a stream of one-off keys from growing the cache without end.
const MAX_CACHED_KEY_SETS = 10_000;

/** Redis (standalone, Sentinel or Cluster) lock store; one round trip per operation. */
export class RedisLockBackend implements LockBackend {
  readonly kind = 'redis';
  private readonly logger = new Logger('RedisLockBackend');
  private subscriber?: RedisConnection;
  private readonly listeners = new Set<(key: string | null) => void>();
  private readonly acquireKeySets = new Map<string, string[]>();

  constructor(
    private readonly redis: RedisConnection,
    /** Pub/sub channel on which releases are announced to waiters. */
    private readonly releaseChannel: string,
  ) {}

  async tryAcquire(
    keys: string[],
    token: string,
    ttlMs: number,
    holder: EncodedHolder,
    willWait: boolean,
  ): Promise<AttemptResult> {
    this.assertSameSlot(keys);
    const scriptKeys =
      keys.length === 1 ? this.acquireKeysOf(keys[0]) : [...keys, ...keys.map(fenceKey)];
    // Awaited here rather than through run(): on the hot path, one async layer less.
    try {
      const value = encodeLockValue(token, holder);
      return toAttempt(
        (await SCRIPTS.acquire.run(this.redis, scriptKeys, [
          value,
          ttlMs,
          willWait ? '1' : '0',
        ])) as number | number[],
      );
    } catch (error) {
      throw new LockBackendError(keys[0], error);
    }
  }

  async tryAcquireFair(
    key: string,
    token: string,
    ttlMs: number,
    holder: EncodedHolder,
    staleMs: number,
  ): Promise<AttemptResult> {
    const keys = [
      key,
      fenceKey(key),
      queueKey(key),
      siblingKey(key, 'seen'),
      siblingKey(key, 'ticket'),
    ];
    const reply = (await this.run(SCRIPTS.acquireFair, key, keys, [
      encodeLockValue(token, holder),
      ttlMs,
      token,
      staleMs,
    ])) as number[];
    return toAttempt(reply);
  }

  async leaveQueue(key: string, token: string): Promise<void> {
    await this.run(SCRIPTS.leaveQueue, key, [queueKey(key), siblingKey(key, 'seen')], [token]);
  }

  async extend(keys: string[], token: string, ttlMs: number): Promise<boolean> {
    return (await this.run(SCRIPTS.extend, keys[0], keys, [`${token}:`, ttlMs])) === 1;
  }

  async release(keys: string[], token: string): Promise<number> {
    // Awaited here rather than through run(), as in tryAcquire.
    try {
      const argv = [`${token}:`, this.releaseChannel];
      return (await SCRIPTS.release.run(this.redis, keys, argv)) as number;
    } catch (error) {
      throw new LockBackendError(keys[0], error);
    }
  }

  async status(key: string): Promise<LockStatus> {
    try {
      // Three reads of one slot; a lock released between them shows as free with no holder.
      const [value, ttl, fence] = await Promise.all([
        this.redis.get(key),
        this.redis.pttl(key),
        this.redis.get(fenceKey(key)),
      ]);
      const holder = decodeLockValue(value);
      return {
        key,
        locked: value !== null,
        ttlMs: value !== null && ttl >= 0 ? ttl : null,
        holder,
        fence: Number(fence ?? 0),
      };
    } catch (error) {
      throw new LockBackendError(key, error);
    }
  }

  async forceRelease(key: string, holderFence: number): Promise<AimedForceRelease> {
    const [value, fence, changed] = (await this.run(
      SCRIPTS.forceRelease,
      key,
      [key, fenceKey(key), siblingKey(key, 'forced')],
      [this.releaseChannel, holderFence, FORCED_RELEASE_MEMORY_MS],
    )) as [string | null, number, number];
    const holder = decodeLockValue(value);
    return changed === 1
      ? { key, released: false, previousHolder: null, fence, holderChanged: true, holder }
      : { key, released: value !== null, previousHolder: holder, fence, holderChanged: false };
  }

  async raiseFence(key: string, token: string, atLeast: number): Promise<number | null> {
    assertFence(atLeast);
    const fence = (await this.run(
      SCRIPTS.raiseFence,
      key,
      [key, fenceKey(key)],
      [`${token}:`, atLeast],
    )) as number;
    return fence > 0 ? fence : null;
  }

  onRelease(listener: (key: string | null) => void): () => void {
    this.listeners.add(listener);
    this.ensureSubscribed();
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    this.listeners.clear();
    if (subscriber) await subscriber.quit().catch(() => subscriber.disconnect());
  }

  /**
   * One subscriber connection per backend, opened on first use. While it is down, waiters keep
   * polling with backoff, so a lost notification costs latency, never correctness.
   */
  private ensureSubscribed(): void {
    if (this.subscriber) return;
    const subscriber = subscriberFor(this.redis);
    this.subscriber = subscriber;
    subscriber.on('error', (error: Error) => {
      this.logger.debug(`release subscriber: ${error.message}`);
    });
    subscriber.on('message', (_channel: string, key: string) => this.announce(key));
    // Subscribed on every (re)connection; releases published before the subscription took
    // effect were not seen, so once it is confirmed every waiter looks again instead of
    // sleeping out its backoff.
    subscriber.on('ready', () => {
      subscriber
        .subscribe(this.releaseChannel)
        .then(() => this.announce(null))
        .catch((error: unknown) => {
          this.logger.warn(
            `cannot subscribe to lock releases, waiters will poll: ${String(error)}`,
          );
        });
    });
  }

  private announce(key: string | null): void {
    for (const listener of this.listeners) listener(key);
  }

  private acquireKeysOf(key: string): string[] {
    let keys = this.acquireKeySets.get(key);
    if (!keys) {
      if (this.acquireKeySets.size >= MAX_CACHED_KEY_SETS) this.acquireKeySets.clear();
      keys = [key, fenceKey(key)];
      this.acquireKeySets.set(key, keys);
    }
    return keys;
  }

  private assertSameSlot(keys: string[]): void {
    if (keys.length < 2 || !(this.redis instanceof Cluster)) return;
    const slot = calculateSlot(keys[0]);
    if (keys.some((key) => calculateSlot(key) !== slot)) {
      throw new LockBackendError(
        keys.join(', '),
        new Error('on Redis Cluster, keys locked together must share a {hash tag}'),
      );
    }
  }

  private async run(
    script: LuaScript,
    key: string,
    keys: string[],
    args: (string | number)[],
  ): Promise<unknown> {
    try {
      return await script.run(this.redis, keys, args);
    } catch (error) {
      throw new LockBackendError(key, error);
    }
  }
}

/** Decodes the acquire scripts' replies (see ACQUIRE); integer replies arrive as numbers. */
function toAttempt(reply: number | number[]): AttemptResult {
  if (typeof reply === 'number') {
    if (reply > 0) return { acquired: true, fences: [reply] };
    const ttl = -3 - reply;
    return { acquired: false, holderTtlMs: ttl >= 0 ? ttl : null };
  }
  if (reply[0] === 1) return { acquired: true, fences: reply.slice(1) };
  const ttl = Number(reply[1]);
  return { acquired: false, holderTtlMs: ttl >= 0 ? ttl : null };
}
