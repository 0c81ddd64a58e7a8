import Redis from 'ioredis';
import { LockService, StaleFenceError } from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { FencedWrites } from '../support/fenced-writes';
import { PrivateRedis } from '../support/redis-server';
import { waitFor } from '../support/wait';

/**
 * A Redis without persistence that restarts forgets its fence counters, while Postgres still
 * records the highest fence written. The first holder after the restart must not be locked out.
 */
describe('fencing across a Redis restart without persistence (private redis-server)', () => {
  let server: PrivateRedis;
  let redis: Redis;
  let locks: LockService;
  let db: FencedWrites;

  beforeAll(async () => {
    server = await PrivateRedis.start();
    db = await FencedWrites.create();
    redis = new Redis(server.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      retryStrategy: () => 50,
    });
    await waitFor(() => redis.status === 'ready');
    locks = new LockService(
      new RedisLockBackend(redis, 'lock:__released'),
      { backend: 'redis', redis },
      new LockMetrics(),
    );
  });

  afterAll(async () => {
    await locks?.onApplicationShutdown();
    redis?.disconnect();
    await server?.kill();
    await db?.close();
  });

  it('lets the first holder after the restart write at once above the recorded fence, and refuses one from before', async () => {
    const key = 'lock:fencing:restart';
    for (let i = 0; i < 4; i++) {
      const handle = await locks.acquire(key, { ttlMs: 10_000 });
      await db.write(handle, `before-${i}`);
      await handle.release();
    }
    // Still holding when Redis dies: its lease dies with the server.
    const old = await locks.acquire(key, { ttlMs: 60_000 });
    await db.write(old, 'old');
    expect(old.fence).toBe(5);

    await server.kill();
    await server.start();
    await waitFor(async () => redis.status === 'ready' && (await redis.ping()) === 'PONG', {
      what: 'the client to reconnect',
    });

    const fresh = await locks.acquire(key, { ttlMs: 10_000 });
    // The counter started again from nothing: the fault is real.
    expect(fresh.fence).toBe(1);
    // With that fence alone (no way to prove it holds the lock) the write is refused: what
    // every holder after such a restart met before fences could be raised.
    await expect(
      db.write({ key, fence: fresh.fence, token: fresh.token }, 'unraised'),
    ).rejects.toBeInstanceOf(StaleFenceError);

    await db.write(fresh, 'fresh');
    expect(fresh.fence).toBeGreaterThan(5);
    expect(await db.recorded(key)).toEqual({ fence: fresh.fence, holderToken: fresh.token });
    // Writing again with the raised fence needs no second raise.
    const raised = fresh.fence;
    await db.write(fresh, 'fresh-again');
    expect(fresh.fence).toBe(raised);

    // The holder from before the restart no longer holds its key in Redis: it cannot raise.
    await expect(db.write(old, 'old-after-restart')).rejects.toBeInstanceOf(StaleFenceError);

    // The counter was moved past the recorded fence: the next holder writes without raising.
    await fresh.release();
    const next = await locks.acquire(key, { ttlMs: 10_000 });
    expect(next.fence).toBe(raised + 1);
    await db.write(next, 'next');
    expect(next.fence).toBe(raised + 1);
    await next.release();

    expect(await db.writes(key)).toEqual([
      { fence: 1, writer: 'before-0' },
      { fence: 2, writer: 'before-1' },
      { fence: 3, writer: 'before-2' },
      { fence: 4, writer: 'before-3' },
      { fence: 5, writer: 'old' },
      { fence: raised, writer: 'fresh' },
      { fence: raised, writer: 'fresh-again' },
      { fence: raised + 1, writer: 'next' },
    ]);
  });
});
