import { randomBytes } from 'node:crypto';
import { LockLostError, StaleFenceError } from '../../src/lock';
import { FencedWrites } from '../support/fenced-writes';
import { BackendKind, LockFixture, lockFixture } from '../support/locks';

describe('Postgres fencing: an equal fence is valid only for its holder', () => {
  let db: FencedWrites;
  const key = (name: string) => `lock:fencing:${randomBytes(4).toString('hex')}:${name}`;

  beforeAll(async () => {
    db = await FencedWrites.create();
  });
  afterAll(async () => {
    await db?.close();
  });

  it('passes an equal fence with the same token and refuses it with another or none', async () => {
    const lockKey = key('tokens');
    await db.write({ key: lockKey, fence: 7, token: 'holder-a' }, 'a');
    await db.write({ key: lockKey, fence: 7, token: 'holder-a' }, 'a-again');
    await expect(
      db.write({ key: lockKey, fence: 7, token: 'holder-b' }, 'b'),
    ).rejects.toBeInstanceOf(StaleFenceError);
    await expect(db.write({ key: lockKey, fence: 7 }, 'no-token')).rejects.toBeInstanceOf(
      StaleFenceError,
    );
    await expect(
      db.write({ key: lockKey, fence: 6, token: 'holder-a' }, 'older'),
    ).rejects.toBeInstanceOf(StaleFenceError);
    await db.write({ key: lockKey, fence: 8, token: 'holder-b' }, 'b-newer');
    expect(await db.recorded(lockKey)).toEqual({ fence: 8, holderToken: 'holder-b' });
    expect((await db.writes(lockKey)).map((write) => write.writer)).toEqual([
      'a',
      'a-again',
      'b-newer',
    ]);
  });

  it('records an advanced fence with no holder, so nobody can write with it', async () => {
    const lockKey = key('advance');
    await db.write({ key: lockKey, fence: 3, token: 'holder-a' }, 'a');
    await db.fencing.advance(db.pool, { key: lockKey, fence: 4 });
    expect(await db.recorded(lockKey)).toEqual({ fence: 4, holderToken: null });
    await expect(
      db.write({ key: lockKey, fence: 3, token: 'holder-a' }, 'a'),
    ).rejects.toBeInstanceOf(StaleFenceError);
    await expect(
      db.write({ key: lockKey, fence: 4, token: 'holder-a' }, 'a'),
    ).rejects.toBeInstanceOf(StaleFenceError);
    // An advance never lowers what a newer holder recorded.
    await db.write({ key: lockKey, fence: 6, token: 'holder-c' }, 'c');
    await db.fencing.advance(db.pool, { key: lockKey, fence: 5 });
    expect(await db.recorded(lockKey)).toEqual({ fence: 6, holderToken: 'holder-c' });
  });

  describe.each<BackendKind>(['memory', 'redis'])('with lock handles (%s backend)', (kind) => {
    let fixture: LockFixture;

    beforeAll(() => {
      fixture = lockFixture(kind, {
        onForceRelease: ({ key: lockKey, fence }) =>
          db.fencing.advance(db.pool, { key: lockKey, fence }),
      });
    });
    afterAll(async () => {
      await fixture?.close();
    });

    it('blocks the evicted holder after a force-release; the next holder writes', async () => {
      const lockKey = fixture.key('forced');
      const evicted = await fixture.locks.acquire(lockKey, { ttlMs: 10_000 });
      await db.write(evicted, 'evicted');
      const { fence } = await fixture.locks.forceRelease(lockKey, { by: 'test' });
      expect(await db.recorded(lockKey)).toEqual({ fence, holderToken: null });
      // Refused, and it cannot raise its fence: it no longer holds the lock.
      await expect(db.write(evicted, 'evicted-again')).rejects.toBeInstanceOf(StaleFenceError);
      expect(evicted.fence).toBe(fence - 1);

      const next = await fixture.locks.acquire(lockKey, { ttlMs: 10_000 });
      expect(next.fence).toBe(fence + 1);
      await db.write(next, 'next');
      await next.release();
      expect((await db.writes(lockKey)).map((write) => write.writer)).toEqual(['evicted', 'next']);
    });

    it('raises the fence of a held lock above a given one, and of nothing else', async () => {
      const lockKey = fixture.key('raise');
      const handle = await fixture.locks.acquire(lockKey, { ttlMs: 10_000 });
      expect(handle.fence).toBe(1);
      expect(await handle.raiseFence(40)).toBe(41);
      expect(handle.fence).toBe(41);
      // Below the counter: it only bumps it.
      expect(await handle.raiseFence(10)).toBe(42);
      expect((await fixture.locks.status(lockKey)).fence).toBe(42);
      await expect(handle.raiseFence(1.5)).rejects.toBeInstanceOf(RangeError);
      await handle.release();
      expect(await handle.raiseFence(50)).toBeNull();

      // Taken over by another holder: the old handle cannot raise, and counts as lost.
      const lost = await fixture.locks.acquire(lockKey, { ttlMs: 10_000 });
      await fixture.locks.forceRelease(lockKey);
      const other = await fixture.locks.acquire(lockKey, { ttlMs: 10_000 });
      expect(await lost.raiseFence(100)).toBeNull();
      expect(lost.signal.reason).toBeInstanceOf(LockLostError);
      expect((await fixture.locks.status(lockKey)).fence).toBe(other.fence);
      await other.release();
    });
  });
});
