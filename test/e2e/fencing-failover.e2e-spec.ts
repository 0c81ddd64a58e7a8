import Redis from 'ioredis';
import { LockHandle, LockService, StaleFenceError } from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { FencedWrites } from '../support/fenced-writes';
import { PrivateReplication } from '../support/redis-replication';
import { waitFor } from '../support/wait';

/**
 * A failover that lost the last acquire: the replica is promoted before the master's newest
 * acquire reached it, so a holder on each side gets the same fence. Postgres must never take
 * writes of both in turn (A, B, A).
 */
describe('fencing across a Redis failover (private master + replica)', () => {
  let pair: PrivateReplication;
  let db: FencedWrites;
  const clients: Redis[] = [];
  // Instance A talks to the old master, instance B to the promoted replica.
  let lockA: LockService;
  let lockB: LockService;
  const keys = ['lock:fencing:failover:a-first', 'lock:fencing:failover:b-first'];

  const lockServiceOn = async (url: string) => {
    const redis = new Redis(url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      retryStrategy: () => 50,
    });
    clients.push(redis);
    await waitFor(() => redis.status === 'ready');
    return new LockService(
      new RedisLockBackend(redis, 'lock:__released'),
      { backend: 'redis', redis },
      new LockMetrics(),
    );
  };

  /** Holders A and B of one key with the same fence, after the failover. */
  let holders: { a: LockHandle; b: LockHandle }[];

  beforeAll(async () => {
    // One after the other: afterAll stops whatever was started, also if the other failed.
    pair = await PrivateReplication.start();
    db = await FencedWrites.create();
    [lockA, lockB] = await Promise.all([
      lockServiceOn(pair.master.url),
      lockServiceOn(pair.replica.url),
    ]);
    // Some history both servers share: fences 1 and 2 written and replicated.
    for (const key of keys) {
      for (let i = 0; i < 2; i++) {
        const handle = await lockA.acquire(key, { ttlMs: 10_000 });
        await db.write(handle, `before-${i}`);
        await handle.release();
      }
    }
    await pair.synced();
    // Promoted before A's acquire below: that acquire never reaches the new master.
    await pair.promoteReplica();
    holders = [];
    for (const key of keys) {
      const a = await lockA.acquire(key, { ttlMs: 60_000 });
      const b = await lockB.acquire(key, { ttlMs: 60_000 });
      holders.push({ a, b });
    }
  });

  afterAll(async () => {
    await Promise.all([lockA?.onApplicationShutdown(), lockB?.onApplicationShutdown()]);
    for (const client of clients) client.disconnect();
    await pair?.stop();
    await db?.close();
  });

  it('hands out the same fence on both sides: the split is real', () => {
    for (const { a, b } of holders) {
      expect(a.fence).toBe(3);
      expect(b.fence).toBe(3);
      expect(a.token).not.toBe(b.token);
    }
  });

  it('first A writes; B is refused with that fence, raises and writes; then A is refused for good', async () => {
    const { a, b } = holders[0];
    const key = keys[0];
    await db.write(a, 'A');
    // At most one of the two can write with fence 3: B, unable to raise, is refused.
    await expect(
      db.write({ key, fence: b.fence, token: b.token }, 'B-unraised'),
    ).rejects.toBeInstanceOf(StaleFenceError);

    await db.write(b, 'B');
    expect(b.fence).toBe(4);
    // A still holds its key on the old master, yet once superseded it never raises again.
    expect(await clients[0].get(key)).toMatch(new RegExp(`^${a.token}:`));
    await expect(db.write(a, 'A-again')).rejects.toBeInstanceOf(StaleFenceError);
    expect(a.fence).toBe(3);
    await db.write(b, 'B-again');

    expect(await db.writes(key)).toEqual([
      { fence: 1, writer: 'before-0' },
      { fence: 2, writer: 'before-1' },
      { fence: 3, writer: 'A' },
      { fence: 4, writer: 'B' },
      { fence: 4, writer: 'B-again' },
    ]);
  });

  it('the other way round: B first, then A raises on its side, and B is refused for good', async () => {
    const { a, b } = holders[1];
    const key = keys[1];
    await db.write(b, 'B');
    await db.write(a, 'A');
    expect(a.fence).toBe(4);
    await expect(db.write(b, 'B-again')).rejects.toBeInstanceOf(StaleFenceError);
    await db.write(a, 'A-again');

    expect((await db.writes(key)).map((write) => write.writer)).toEqual([
      'before-0',
      'before-1',
      'B',
      'A',
      'A-again',
    ]);
  });
});
