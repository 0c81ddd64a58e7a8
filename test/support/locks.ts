import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import { LockBackend } from '../../src/lock/lock-backend';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { LockModuleOptions } from '../../src/lock/lock.module-definition';
import { LockService } from '../../src/lock/lock.service';
import { MemoryLockBackend } from '../../src/lock/memory-lock.backend';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { TEST_REDIS_URL } from './env';

export type BackendKind = 'redis' | 'memory';

export interface LockFixture {
  locks: LockService;
  backend: LockBackend;
  metrics: LockMetrics;
  /** A key of this run, unique across parallel test files. */
  key(name?: string): string;
  close(): Promise<void>;
}

/** A LockService on a fresh backend of the given kind (Redis: the shared test Redis, fail-fast). */
export function lockFixture(
  kind: BackendKind,
  options: Partial<LockModuleOptions> = {},
): LockFixture {
  const run = randomBytes(4).toString('hex');
  const redis =
    kind === 'redis'
      ? new Redis(TEST_REDIS_URL, { enableOfflineQueue: true, maxRetriesPerRequest: 1 })
      : undefined;
  const backend = redis ? new RedisLockBackend(redis, 'lock:__released') : new MemoryLockBackend();
  const metrics = new LockMetrics();
  const locks = new LockService(backend, { backend: kind, redis, ...options }, metrics);
  let counter = 0;
  return {
    locks,
    backend,
    metrics,
    key: (name = 'k') => `lock:test:${run}:${name}:${counter++}`,
    close: async () => {
      await locks.onApplicationShutdown();
      await redis?.quit();
    },
  };
}

/** Sum of a prom-client counter over all label sets. */
export async function counterTotal(counter: { get(): Promise<{ values: { value: number }[] }> }) {
  return (await counter.get()).values.reduce((sum, { value }) => sum + value, 0);
}
