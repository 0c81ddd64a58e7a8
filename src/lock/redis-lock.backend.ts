import { LuaScript } from '../redis/lua-script';
import { subscriberFor } from '../redis/subscriber';
import { Logger } from '@nestjs/common';
import calculateSlot from 'cluster-key-slot';
import Redis, { Cluster } from 'ioredis';
import {
  AttemptResult,
  LockBackend,
  WaitMode,
  decodeLockValue,
  encodeLockValue,
} from './lock-backend';
import { LockBackendError } from './lock.errors';
import { siblingKey } from './lock-keys';
import { ForceReleaseResult, LockHolder, LockStatus } from './lock.types';
import {
  ACQUIRE,
  ACQUIRE_FAIR,
  EXTEND,
  FORCE_RELEASE,
  LEAVE_QUEUE,
  LEAVE_WAIT,
  RELEASE,
} from './redis-lock.scripts';

export type RedisConnection = Redis | Cluster;

const SCRIPTS = {
  acquire: new LuaScript(ACQUIRE),
  acquireFair: new LuaScript(ACQUIRE_FAIR),
  leaveWait: new LuaScript(LEAVE_WAIT),
  leaveQueue: new LuaScript(LEAVE_QUEUE),
  extend: new LuaScript(EXTEND),
  release: new LuaScript(RELEASE),
  forceRelease: new LuaScript(FORCE_RELEASE),
};

const fenceKey = (key: string) => siblingKey(key, 'fence');
const waitersKey = (key: string) => siblingKey(key, 'waiters');
const queueKey = (key: string) => siblingKey(key, 'queue');

/** Redis (standalone, Sentinel or Cluster) lock store; one round trip per operation. */
export class RedisLockBackend implements LockBackend {
  readonly kind = 'redis';
  private readonly logger = new Logger('RedisLockBackend');
  private subscriber?: RedisConnection;
  private readonly listeners = new Set<(key: string | null) => void>();

  constructor(
    private readonly redis: RedisConnection,
    /** Pub/sub channel on which releases are announced to waiters. */
    private readonly releaseChannel: string,
  ) {}

  async tryAcquire(
    keys: string[],
    token: string,
    ttlMs: number,
    holder: LockHolder,
    waitMode: WaitMode,
  ): Promise<AttemptResult> {
    this.assertSameSlot(keys);
    const reply = (await this.run(
      SCRIPTS.acquire,
      keys[0],
      [...keys, ...keys.map(fenceKey), ...keys.map(waitersKey)],
      [encodeLockValue(token, holder), ttlMs, waitMode],
    )) as number[];
    return toAttempt(reply);
  }

  async leaveWait(keys: string[]): Promise<void> {
    await this.run(SCRIPTS.leaveWait, keys[0], keys.map(waitersKey), []);
  }

  async tryAcquireFair(
    key: string,
    token: string,
    ttlMs: number,
    holder: LockHolder,
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
    await this.run(
      SCRIPTS.leaveQueue,
      key,
      [siblingKey(key, 'queue'), siblingKey(key, 'seen')],
      [token],
    );
  }

  async extend(keys: string[], token: string, ttlMs: number): Promise<boolean> {
    return (await this.run(SCRIPTS.extend, keys[0], keys, [`${token}:`, ttlMs])) === 1;
  }

  async release(keys: string[], token: string): Promise<number> {
    return (await this.run(
      SCRIPTS.release,
      keys[0],
      [...keys, ...keys.map(waitersKey), ...keys.map(queueKey)],
      [`${token}:`, this.releaseChannel],
    )) as number;
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

  async forceRelease(key: string): Promise<ForceReleaseResult> {
    const [value, fence] = (await this.run(
      SCRIPTS.forceRelease,
      key,
      [key, fenceKey(key)],
      [this.releaseChannel],
    )) as [string | null, number];
    return { key, released: value !== null, previousHolder: decodeLockValue(value), fence };
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

function toAttempt(reply: number[]): AttemptResult {
  if (reply[0] === 1) return { acquired: true, fences: reply.slice(1).map(Number) };
  const ttl = Number(reply[1]);
  return { acquired: false, holderTtlMs: ttl >= 0 ? ttl : null };
}
