import calculateSlot from 'cluster-key-slot';
import { Cluster } from 'ioredis';
import { LockBackendError, LockService } from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { TestApp, startTestApp } from '../support/app';
import { PrivateRedisCluster } from '../support/private-cluster';

describe('locks on a local 3-master Redis Cluster', () => {
  let cluster: PrivateRedisCluster;
  let client: Cluster;
  let locks: LockService;

  beforeAll(async () => {
    cluster = await PrivateRedisCluster.start();
    client = new Cluster(cluster.nodes, { redisOptions: { maxRetriesPerRequest: 1 } });
    locks = new LockService(
      new RedisLockBackend(client, 'lock:__released'),
      { backend: 'redis', redis: client, backoffMs: 10, maxBackoffMs: 100 },
      new LockMetrics(),
    );
  }, 60_000);

  afterAll(async () => {
    await locks?.onApplicationShutdown();
    await client?.quit();
    await cluster?.stop();
  });

  it('acquires, extends, reports, force-releases and hands off keys spread over the masters', async () => {
    const keys = Array.from({ length: 12 }, (_, i) => `lock:cluster:key-${i}`);
    // The keys land in slots of different masters (16384 slots split three ways).
    expect(new Set(keys.map((key) => Math.floor(calculateSlot(key) / 5462))).size).toBeGreaterThan(
      1,
    );
    for (const key of keys) {
      const first = await locks.acquire(key, { ttlMs: 5_000 });
      expect(await locks.tryAcquire(key)).toBeNull();
      await first.extend(8_000);
      expect((await locks.status(key)).ttlMs).toBeGreaterThan(5_000);
      expect((await locks.forceRelease(key)).fence).toBe(first.fence + 1);
      const second = await locks.acquire(key, { ttlMs: 5_000 });
      expect(second.fence).toBe(first.fence + 2);
      expect(await second.release()).toBe(true);
    }
  });

  it('hands the lock to every waiter (pub/sub wake-ups) and works in fair mode', async () => {
    const key = 'lock:cluster:contended';
    const holder = await locks.acquire(key, { ttlMs: 10_000 });
    const order: number[] = [];
    const waiters = Array.from({ length: 5 }, (_, i) =>
      locks.withLock(key, () => void order.push(i), { ttlMs: 5_000, waitTimeoutMs: 10_000 }),
    );
    await holder.release();
    await Promise.all(waiters);
    expect(order.sort()).toEqual([0, 1, 2, 3, 4]);
    const fair = await locks.withLock(key, () => 'fair', { fair: true, ttlMs: 1_000 });
    expect(fair).toBe('fair');
  });

  it('takes keys that share a hash tag together, and refuses keys in different slots clearly', async () => {
    const many = await locks.acquireMany(['lock:{tenant-7}:a', 'lock:{tenant-7}:b'], {
      ttlMs: 5_000,
    });
    expect(Object.keys(many.fences)).toHaveLength(2);
    await many.release();
    await expect(locks.acquireMany(['lock:cluster:x', 'lock:cluster:y'])).rejects.toBeInstanceOf(
      LockBackendError,
    );
  });

  it('runs the service against the cluster (REDIS_MODE=cluster)', async () => {
    let app: TestApp | undefined;
    try {
      app = await startTestApp({
        REDIS_MODE: 'cluster',
        REDIS_CLUSTER_NODES: cluster.nodes.map(({ host, port }) => `${host}:${port}`).join(','),
        REDIS_URL: `redis://127.0.0.1:${cluster.nodes[0].port}`,
      });
      const health = await app.http.get('/api/v1/vector/health').expect(200);
      expect(health.body.details).toMatchObject({
        redis: { status: 'up' },
        locks: { status: 'up' },
      });
    } finally {
      await app?.close();
    }
  });
});
