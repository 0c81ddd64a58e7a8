import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import { IdempotencyStore } from '../../src/idempotency/idempotency-store';
import { IdempotencyMetrics } from '../../src/idempotency/idempotency.metrics';
import { IdempotencyService } from '../../src/idempotency/idempotency.service';
import { MemoryIdempotencyStore } from '../../src/idempotency/memory-idempotency.store';
import { RedisIdempotencyStore } from '../../src/idempotency/redis-idempotency.store';
import { TEST_REDIS_URL } from './env';

export type StoreKind = 'redis' | 'memory';

export interface IdempotencyFixture {
  idem: IdempotencyService;
  store: IdempotencyStore;
  metrics: IdempotencyMetrics;
  redis?: Redis;
  key(name?: string): string;
  /** Count of a singleflight event (hit, miss, wait, takeover, …) over all scopes. */
  events(event: string): Promise<number>;
  close(): Promise<void>;
}

export function idempotencyFixture(kind: StoreKind, connectionName?: string): IdempotencyFixture {
  const run = randomBytes(4).toString('hex');
  const redis =
    kind === 'redis'
      ? new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1, connectionName })
      : undefined;
  const store = redis
    ? new RedisIdempotencyStore(redis, 'idem:__settled')
    : new MemoryIdempotencyStore();
  const metrics = new IdempotencyMetrics();
  const idem = new IdempotencyService(store, { backend: kind, redis }, metrics);
  let counter = 0;
  return {
    idem,
    store,
    metrics,
    redis,
    key: (name = 'k') => `idem:test:${run}:${name}:${counter++}`,
    events: async (event) =>
      (await metrics.events.get()).values
        .filter(({ labels }) => labels.event === event)
        .reduce((sum, { value }) => sum + value, 0),
    close: async () => {
      await idem.onApplicationShutdown();
      await redis?.quit();
    },
  };
}
