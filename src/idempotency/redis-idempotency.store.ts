import { LuaScript } from '../redis/lua-script';
import { subscriberFor } from '../redis/subscriber';
import { Logger } from '@nestjs/common';
import type { Cluster, Redis } from 'ioredis';
import { BeginResult, IdempotencyStore, parseRecord } from './idempotency-store';
import { IdempotencyBackendError } from './idempotency.errors';
import { IdempotencyRecord } from './idempotency.types';
import { ABANDON, BEGIN, COMPLETE, FORGET_RESULT, HEARTBEAT } from './redis-idempotency.scripts';

const SCRIPTS = {
  begin: new LuaScript(BEGIN),
  heartbeat: new LuaScript(HEARTBEAT),
  complete: new LuaScript(COMPLETE),
  abandon: new LuaScript(ABANDON),
  forgetResult: new LuaScript(FORGET_RESULT),
};

/** Idempotency records in Redis (standalone, Sentinel or Cluster); completions are published. */
export class RedisIdempotencyStore implements IdempotencyStore {
  readonly kind = 'redis';
  private readonly logger = new Logger('RedisIdempotencyStore');
  private subscriber?: Redis | Cluster;
  private subscribed?: Promise<void>;
  private readonly listeners = new Set<(key: string) => void>();

  constructor(
    private readonly redis: Redis | Cluster,
    private readonly channel: string,
  ) {}

  async begin(
    key: string,
    record: IdempotencyRecord,
    leaseMs: number,
    force: boolean,
  ): Promise<BeginResult> {
    const reply = (await this.run(SCRIPTS.begin, key, [
      JSON.stringify(record),
      Math.ceil(leaseMs),
      force ? '1' : '0',
    ])) as [number, string?];
    if (reply[0] === 1) return { leader: true };
    const current = parseRecord(reply[1] ?? null);
    if (!current) throw new IdempotencyBackendError(key, new Error('unreadable record'));
    return { leader: false, record: current };
  }

  async heartbeat(key: string, owner: string, leaseMs: number): Promise<boolean> {
    return (await this.run(SCRIPTS.heartbeat, key, [owner, Math.ceil(leaseMs)])) === 1;
  }

  async complete(
    key: string,
    owner: string,
    record: IdempotencyRecord,
    ttlMs: number,
  ): Promise<boolean> {
    return (
      (await this.run(SCRIPTS.complete, key, [
        owner,
        JSON.stringify(record),
        Math.ceil(ttlMs),
        this.channel,
      ])) === 1
    );
  }

  async abandon(key: string, owner: string): Promise<boolean> {
    return (await this.run(SCRIPTS.abandon, key, [owner, this.channel])) === 1;
  }

  async forgetResult(key: string): Promise<boolean> {
    return (await this.run(SCRIPTS.forgetResult, key, [])) === 1;
  }

  async get(key: string): Promise<IdempotencyRecord | null> {
    try {
      return parseRecord(await this.redis.get(key));
    } catch (error) {
      throw new IdempotencyBackendError(key, error);
    }
  }

  async onSettled(listener: (key: string) => void): Promise<() => void> {
    this.listeners.add(listener);
    await this.ensureSubscribed();
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    this.subscribed = undefined;
    this.listeners.clear();
    if (subscriber) await subscriber.quit().catch(() => subscriber.disconnect());
  }

  /** The (shared) subscriber connection; at most a second's wait, then callers rely on polling. */
  private ensureSubscribed(): Promise<void> {
    if (!this.subscribed) {
      const subscriber = subscriberFor(this.redis);
      this.subscriber = subscriber;
      subscriber.on('error', (error: Error) =>
        this.logger.debug(`completion subscriber: ${error.message}`),
      );
      subscriber.on('message', (_channel: string, key: string) => {
        for (const listener of this.listeners) listener(key);
      });
      this.subscribed = subscriber.subscribe(this.channel).then(
        () => undefined,
        (error: unknown) => {
          this.logger.warn(
            `cannot subscribe to completions, followers will poll: ${String(error)}`,
          );
        },
      );
    }
    return Promise.race([this.subscribed, new Promise<void>((r) => setTimeout(r, 1_000).unref())]);
  }

  private async run(script: LuaScript, key: string, args: (string | number)[]): Promise<unknown> {
    try {
      return await script.run(this.redis, [key], args);
    } catch (error) {
      throw new IdempotencyBackendError(key, error);
    }
  }
}
