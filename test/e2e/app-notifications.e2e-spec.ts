import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import Redis from 'ioredis';
import { IdempotencyService } from '../../src/idempotency';
import { LockService } from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { TestApp, startTestApp } from '../support/app';
import { TEST_REDIS_URL } from '../support/env';
import { counterTotal } from '../support/locks';
import { waitFor } from '../support/wait';

/**
 * With the service's own Redis client (which fails fast while disconnected), waiters must still
 * be woken by notifications, not only by their (here very slow) backoff or polling.
 */
describe('wake-ups through the service Redis client', () => {
  let app: TestApp;

  beforeAll(async () => {
    app = await startTestApp({
      DEFAULT_BACKOFF_MS: '5000',
      LOCK_MAX_BACKOFF_MS: '5000',
      DEFAULT_POLL_INTERVAL_MS: '5000',
    });
  });

  afterAll(async () => {
    await app.close();
  });

  it('hands a lock over on release, not after the 5 s backoff', async () => {
    const locks = app.app.get(LockService);
    const key = `lock:notify:${randomBytes(4).toString('hex')}`;
    const holder = await locks.acquire(key, { ttlMs: 30_000 });
    let acquiredAt = 0;
    const waiter = locks.acquire(key, { waitTimeoutMs: 20_000 }).then((handle) => {
      acquiredAt = Date.now();
      return handle;
    });
    // The waiter has met the taken lock and sleeps in its first 5 s backoff.
    const metrics = app.app.get(LockMetrics, { strict: false });
    await waitFor(async () => (await counterTotal(metrics.conflicts)) >= 1);
    const releasedAt = Date.now();
    await holder.release();
    const handle = await waiter;
    expect(acquiredAt - releasedAt).toBeLessThan(1_000);
    await handle.release();
  });

  it('wakes idempotency followers on completion, not after the 5 s poll', async () => {
    const idem = app.app.get(IdempotencyService);
    const key = `idem:notify:${randomBytes(4).toString('hex')}`;
    let completedAt = 0;
    const leader = idem.singleflight(
      key,
      async () => {
        await delay(300);
        completedAt = Date.now();
        return 'done';
      },
      { scope: 'notify' },
    );
    await waitFor(async () => (await idem.peek(key))?.status === 'in_progress');
    const follower = await idem.singleflight(key, () => Promise.resolve('never'), {
      scope: 'notify',
    });
    await leader;
    expect(follower).toEqual({ status: 'done', result: 'done', replayed: true });
    expect(Date.now() - completedAt).toBeLessThan(1_000);
  });
});

describe('a release published before the waiter has subscribed', () => {
  let redis: Redis;
  const services: LockService[] = [];

  beforeAll(() => {
    redis = new Redis(TEST_REDIS_URL);
  });

  afterAll(async () => {
    await Promise.all(services.map((service) => service.onApplicationShutdown()));
    await redis.quit();
  });

  const service = (backend: RedisLockBackend) => {
    const locks = new LockService(
      backend,
      { backend: 'redis', redis, backoffMs: 5_000, maxBackoffMs: 5_000 },
      new LockMetrics(),
    );
    services.push(locks);
    return locks;
  };

  it('is caught up once the subscription is in place, not after the 5 s backoff', async () => {
    const key = `lock:notify:${randomBytes(4).toString('hex')}`;
    const holder = await service(new RedisLockBackend(redis, 'lock:__released')).acquire(key);
    // The waiter's first attempt meets the lock; the holder lets go before the waiter's
    // service (fresh, so not yet subscribed) can subscribe: that release's message is lost.
    const waiterBackend = new RedisLockBackend(redis, 'lock:__released');
    const attempt = waiterBackend.tryAcquire.bind(waiterBackend);
    let releaseFirst: (() => Promise<unknown>) | undefined = () => holder.release();
    waiterBackend.tryAcquire = async (...args) => {
      const result = await attempt(...args);
      const release = releaseFirst;
      releaseFirst = undefined;
      if (!result.acquired && release) await release();
      return result;
    };
    const started = Date.now();
    const handle = await service(waiterBackend).acquire(key, { waitTimeoutMs: 20_000 });
    expect(releaseFirst).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(1_000);
    await handle.release();
  });
});
