import Redis from 'ioredis';
import { LockBackendError, LockLostError, LockService } from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { TestApp, startTestApp } from '../support/app';
import { counterTotal } from '../support/locks';
import { PrivateRedis } from '../support/redis-server';
import { waitFor } from '../support/wait';

describe('locks while Redis goes away and comes back', () => {
  let server: PrivateRedis;
  let redis: Redis;
  let locks: LockService;
  const metrics = new LockMetrics();

  beforeAll(async () => {
    server = await PrivateRedis.start();
    // Fail fast while disconnected, as the service's client does.
    redis = new Redis(server.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      retryStrategy: () => 50,
    });
    await waitFor(() => redis.status === 'ready');
    locks = new LockService(
      new RedisLockBackend(redis, 'lock:__released'),
      { backend: 'redis', redis, backoffMs: 20, maxBackoffMs: 100 },
      metrics,
    );
  });

  afterAll(async () => {
    await locks.onApplicationShutdown();
    redis.disconnect();
    await server.kill();
  });

  it('aborts a renewing holder before its TTL runs out, raises typed errors, and recovers', async () => {
    const ttlMs = 900;
    const outcome = await locks.withLock(
      'lock:outage:held',
      async (handle) => {
        const killedAt = Date.now();
        await server.kill();
        await waitFor(() => handle.signal.aborted, { intervalMs: 10, timeoutMs: 5_000 });
        return { abortedAfter: Date.now() - killedAt, reason: handle.signal.reason as unknown };
      },
      { ttlMs },
    );
    expect(outcome.reason).toBeInstanceOf(LockLostError);
    expect(outcome.abortedAfter).toBeLessThan(ttlMs);

    // While Redis is down: acquire fails at once with a typed error, no hang.
    const started = Date.now();
    await expect(
      locks.acquire('lock:outage:other', { waitTimeoutMs: 10_000 }),
    ).rejects.toBeInstanceOf(LockBackendError);
    expect(Date.now() - started).toBeLessThan(2_000);

    await server.start();
    await waitFor(() => redis.status === 'ready', { timeoutMs: 10_000 });
    const handle = await locks.acquire('lock:outage:other', { ttlMs: 1_000 });
    expect(handle.fence).toBeGreaterThan(0);
    expect(await handle.release()).toBe(true);
  });

  it('rejects a waiter with LockBackendError when Redis dies during the wait', async () => {
    await locks.acquire('lock:outage:wait', { ttlMs: 30_000 });
    const conflictsBefore = await counterTotal(metrics.conflicts);
    const waiting = locks.acquire('lock:outage:wait', { waitTimeoutMs: 10_000 });
    const settled = waiting.then(
      () => 'acquired',
      (error: unknown) => error,
    );
    // The waiter has found the lock taken and is in its backoff loop.
    await waitFor(async () => (await counterTotal(metrics.conflicts)) > conflictsBefore);
    const killedAt = Date.now();
    await server.kill();
    expect(await settled).toBeInstanceOf(LockBackendError);
    expect(Date.now() - killedAt).toBeLessThan(2_000);
    await server.start();
    await waitFor(() => redis.status === 'ready', { timeoutMs: 10_000 });
  });
});

describe('the service with its lock backend down', () => {
  let server: PrivateRedis;
  let app: TestApp;

  beforeAll(async () => {
    server = await PrivateRedis.start();
    app = await startTestApp({ REDIS_URL: server.url, REDIS_CONNECT_TIMEOUT_MS: '1000' });
  });

  afterAll(async () => {
    await app.close();
    await server.kill();
  });

  it('fails closed with 503 (never falls back to memory) and recovers', async () => {
    await server.kill();
    const locks = app.app.get(LockService);
    expect(locks.backendKind).toBe('redis');
    await expect(locks.acquire('lock:outage:app', { waitTimeoutMs: 1_000 })).rejects.toBeInstanceOf(
      LockBackendError,
    );
    const upsert = await app.http.post('/api/v1/vector/batch-upsert').send({
      items: [{ obj_ref: 'x', content: 'y' }],
      table_name: 'questions',
      namespace: 'outage-test',
    });
    expect(upsert.status).toBe(503);
    expect(upsert.headers['content-type']).toContain('application/problem+json');
    await app.http.get('/api/v1/vector/health/ready').expect(503);

    await server.start();
    await waitFor(async () => (await app.http.get('/api/v1/vector/health/ready')).status === 200, {
      timeoutMs: 15_000,
    });
  });
});
