import { setTimeout as delay } from 'node:timers/promises';
import {
  InvalidLockKeyError,
  LockLostError,
  LockNotAcquiredError,
  LockHandle,
} from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { LockService } from '../../src/lock/lock.service';
import { BackendKind, LockFixture, counterTotal, lockFixture } from '../support/locks';
import { waitFor } from '../support/wait';

/** One contract, two backends: the memory backend must behave as Redis does, in one process. */
describe.each<BackendKind>(['redis', 'memory'])('LockService contract (%s backend)', (kind) => {
  let fx: LockFixture;

  beforeEach(() => {
    fx = lockFixture(kind, { backoffMs: 10, maxBackoffMs: 100 });
  });

  afterEach(async () => {
    await fx.close();
  });

  it('grants a lock once, with fences that strictly increase across holders', async () => {
    const key = fx.key();
    const fences: number[] = [];
    for (let i = 0; i < 5; i++) {
      const handle = await fx.locks.acquire(key, { ttlMs: 5_000 });
      expect(await fx.locks.tryAcquire(key)).toBeNull();
      fences.push(handle.fence);
      expect(await handle.release()).toBe(true);
    }
    expect(fences).toEqual([1, 2, 3, 4, 5]);
    expect((await fx.locks.status(key)).locked).toBe(false);
  });

  it('refuses release and extend by a non-owner token', async () => {
    const key = fx.key();
    const handle = await fx.locks.acquire(key, { ttlMs: 5_000 });
    expect(await fx.backend.release([key], 'not-the-owner')).toBe(0);
    expect(await fx.backend.extend([key], 'not-the-owner', 60_000)).toBe(false);
    const status = await fx.locks.status(key);
    expect(status.locked).toBe(true);
    expect(status.ttlMs).toBeLessThanOrEqual(5_000);
    await handle.release();
  });

  it('cannot extend an expired lock, and an old holder cannot release the new one', async () => {
    const key = fx.key();
    const old = await fx.locks.acquire(key, { ttlMs: 80 });
    await waitFor(async () => !(await fx.locks.status(key)).locked, { intervalMs: 10 });
    await expect(old.extend()).rejects.toBeInstanceOf(LockLostError);

    const current = await fx.locks.acquire(key, { ttlMs: 5_000 });
    expect(await old.release()).toBe(false);
    expect((await fx.locks.status(key)).locked).toBe(true);
    expect(current.fence).toBe(old.fence + 1);
    await current.release();
  });

  it('reports status: holder metadata, remaining TTL from the backend and the fence', async () => {
    const key = fx.key();
    const handle = await fx.locks.acquire(key, { ttlMs: 10_000, operation: 'status-test' });
    const status = await fx.locks.status(key);
    expect(status).toMatchObject({
      key,
      locked: true,
      fence: handle.fence,
      holder: { instanceId: fx.locks.instanceId, pid: process.pid, operation: 'status-test' },
    });
    expect(status.ttlMs).toBeGreaterThan(9_000);
    expect(status.ttlMs).toBeLessThanOrEqual(10_000);
    expect(Date.now() - status.holder!.acquiredAt).toBeLessThan(5_000);
    await handle.release();
    expect(await fx.locks.status(key)).toMatchObject({ locked: false, ttlMs: null, holder: null });
  });

  it('force-release removes any holder, bumps the fence, and refuses keys outside the prefix', async () => {
    const key = fx.key();
    const evicted = await fx.locks.acquire(key, { ttlMs: 10_000, operation: 'stuck' });
    const result = await fx.locks.forceRelease(key, { by: 'test-admin' });
    expect(result).toMatchObject({
      key,
      released: true,
      previousHolder: { operation: 'stuck' },
      fence: evicted.fence + 1,
    });
    expect(await evicted.release()).toBe(false);
    const next = await fx.locks.acquire(key, { ttlMs: 1_000 });
    expect(next.fence).toBe(evicted.fence + 2);
    await next.release();

    expect(await fx.locks.forceRelease(key)).toMatchObject({
      released: false,
      previousHolder: null,
    });
    for (const outside of [
      'idem:vector:rebuild:x',
      'other-app:lock',
      'lock:',
      'lock:a b',
      'lock:x#fence',
    ]) {
      await expect(fx.locks.forceRelease(outside)).rejects.toBeInstanceOf(InvalidLockKeyError);
    }
    expect(await counterTotal(fx.metrics.forcedReleases)).toBe(1);
  });

  it('gives up after the wait timeout with LockNotAcquiredError and the holder TTL', async () => {
    const key = fx.key();
    const holder = await fx.locks.acquire(key, { ttlMs: 10_000 });
    const started = Date.now();
    const error = await fx.locks.acquire(key, { waitTimeoutMs: 150 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockNotAcquiredError);
    expect((error as LockNotAcquiredError).waitedMs).toBeGreaterThanOrEqual(150);
    expect((error as LockNotAcquiredError).holderTtlMs).toBeGreaterThan(9_000);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(await counterTotal(fx.metrics.timeouts)).toBe(1);
    await holder.release();
  });

  it('wakes a waiter on release instead of sleeping out its backoff', async () => {
    // A second service on the same store whose backoff alone would make it sleep for 5 s.
    const slowMetrics = new LockMetrics();
    const slow = new LockService(
      fx.backend,
      { backend: kind, backoffMs: 5_000, maxBackoffMs: 5_000 },
      slowMetrics,
    );
    const key = fx.key();
    const holder = await fx.locks.acquire(key, { ttlMs: 10_000 });
    const waiting = slow.acquire(key, { waitTimeoutMs: 8_000 });
    // The waiter has made its first attempt and is now sleeping.
    await waitFor(async () => (await counterTotal(slowMetrics.conflicts)) >= 1);
    const releasedAt = Date.now();
    await holder.release();
    const handle = await waiting;
    expect(Date.now() - releasedAt).toBeLessThan(1_000);
    await handle.release();
  });

  it('acquireMany takes all keys or none', async () => {
    const [a, b, c] = [fx.key('a'), fx.key('b'), fx.key('c')];
    const bHolder = await fx.locks.acquire(b, { ttlMs: 10_000 });
    await expect(fx.locks.acquireMany([a, b, c], { waitTimeoutMs: 0 })).rejects.toBeInstanceOf(
      LockNotAcquiredError,
    );
    expect((await fx.locks.status(a)).locked).toBe(false);
    expect((await fx.locks.status(c)).locked).toBe(false);
    await bHolder.release();

    const all = await fx.locks.acquireMany([c, a, b, a], { ttlMs: 5_000 });
    expect(all.keys).toEqual([a, b, c].sort());
    expect(Object.keys(all.fences).sort()).toEqual([a, b, c].sort());
    for (const key of [a, b, c]) expect((await fx.locks.status(key)).locked).toBe(true);
    await all.extend(8_000);
    expect((await fx.locks.status(a)).ttlMs).toBeGreaterThan(5_000);
    expect(await all.release()).toBe(true);
    for (const key of [a, b, c]) expect((await fx.locks.status(key)).locked).toBe(false);
  });

  it('withLock releases after success and after a throw, leaving no timer behind', async () => {
    const key = fx.key();
    const timersBefore = activeTimers();
    const seen = await fx.locks.withLock(
      key,
      async (handle) => {
        expect(fx.locks.current()).toBe(handle);
        expect((await fx.locks.status(key)).locked).toBe(true);
        return handle.fence;
      },
      { ttlMs: 3_000 },
    );
    expect(seen).toBeGreaterThan(0);
    expect((await fx.locks.status(key)).locked).toBe(false);
    await expect(
      fx.locks.withLock(key, () => Promise.reject(new Error('work failed')), { ttlMs: 3_000 }),
    ).rejects.toThrow('work failed');
    expect((await fx.locks.status(key)).locked).toBe(false);
    expect(fx.locks.current()).toBeUndefined();
    expect(activeTimers()).toBeLessThanOrEqual(timersBefore);
  });

  it('renews the lease while the work outlasts the TTL; release racing renewal raises nothing', async () => {
    const key = fx.key();
    let handle: LockHandle | undefined;
    // TTL 150 ms renewed every 50 ms; the work outlasts ~3 TTLs, ending at random renewal phases.
    // (A shorter TTL is at the mercy of event-loop stalls when the whole suite runs at once.)
    for (let round = 0; round < 5; round++) {
      await fx.locks.withLock(
        key,
        async (h) => {
          handle = h;
          await delay(450 + Math.random() * 50);
          expect(h.signal.aborted).toBe(false);
          expect((await fx.locks.status(key)).locked).toBe(true);
        },
        { ttlMs: 150 },
      );
      expect(handle!.signal.aborted).toBe(false);
      expect((await fx.locks.status(key)).locked).toBe(false);
    }
    expect(await counterTotal(fx.metrics.lost)).toBe(0);
  });

  it('aborts the holder signal when the lease is taken away', async () => {
    const key = fx.key();
    const reason = await fx.locks.withLock(
      key,
      async (handle) => {
        await fx.locks.forceRelease(key);
        const other = await fx.locks.acquire(key, { ttlMs: 5_000 });
        // The next renewal (every 100 ms) finds the key owned by someone else.
        await waitFor(() => handle.signal.aborted, { intervalMs: 10 });
        await other.release();
        return handle.signal.reason as unknown;
      },
      { ttlMs: 300 },
    );
    expect(reason).toBeInstanceOf(LockLostError);
    expect(await counterTotal(fx.metrics.lost)).toBe(1);
  });

  it('serves fair waiters in arrival order', async () => {
    const key = fx.key();
    const holder = await fx.locks.acquire(key, { ttlMs: 10_000 });
    const order: number[] = [];
    const waiters: Promise<void>[] = [];
    for (let i = 0; i < 5; i++) {
      const conflictsBefore = await counterTotal(fx.metrics.conflicts);
      waiters.push(
        fx.locks
          .acquire(key, { fair: true, ttlMs: 5_000, waitTimeoutMs: 10_000 })
          .then(async (handle) => {
            order.push(i);
            await delay(5);
            await handle.release();
          }),
      );
      // Waiter i has joined the queue before waiter i + 1 starts.
      await waitFor(async () => (await counterTotal(fx.metrics.conflicts)) > conflictsBefore);
    }
    await holder.release();
    await Promise.all(waiters);
    expect(order).toEqual([0, 1, 2, 3, 4]);
  });

  it('skips a fair waiter that stopped showing up', async () => {
    const staleMs = 200;
    const fair = lockFixture(kind, { backoffMs: 10, fairStaleMs: staleMs });
    try {
      const key = fair.key();
      // Held throughout, so the ghost can only queue: it never holds the lock, and nothing
      // here waits for a lease to expire.
      const holder = await fair.locks.acquire(key, { ttlMs: 30_000 });
      // A waiter that joined the queue once, first in line, and died.
      expect(await fair.backend.tryAcquireFair(key, 'ghost', 30_000, ghostHolder, staleMs)).toEqual(
        { acquired: false, holderTtlMs: expect.any(Number) as unknown },
      );
      const ghostSeenAt = Date.now();
      const waiting = fair.locks.acquire(key, { fair: true, ttlMs: 5_000, waitTimeoutMs: 3_000 });
      // The live waiter has queued behind the ghost before the holder lets go.
      await waitFor(async () => (await counterTotal(fair.metrics.conflicts)) >= 1);
      await holder.release();
      // Served only because the ghost, ahead of it, was skipped: not before the ghost went
      // stale, and well within the wait (a ghost left in line would block it for 60 s).
      const handle = await waiting;
      expect(Date.now() - ghostSeenAt).toBeGreaterThanOrEqual(staleMs);
      expect((await fair.locks.status(key)).holder?.instanceId).toBe(fair.locks.instanceId);
      await handle.release();
    } finally {
      await fair.close();
    }
  });

  it('rejects a wait cancelled by its AbortSignal', async () => {
    const key = fx.key();
    const holder = await fx.locks.acquire(key, { ttlMs: 10_000 });
    const controller = new AbortController();
    const waiting = fx.locks.acquire(key, { waitTimeoutMs: 10_000, signal: controller.signal });
    controller.abort(new Error('client went away'));
    await expect(waiting).rejects.toThrow('client went away');
    await holder.release();
  });

  it('refuses keys outside the prefix or with unsafe characters', async () => {
    for (const key of [
      'vector:x',
      'lock:',
      'lock:a*',
      'lock:{}',
      'lock:a\nb',
      `lock:${'x'.repeat(500)}`,
    ]) {
      await expect(fx.locks.acquire(key)).rejects.toBeInstanceOf(InvalidLockKeyError);
    }
  });
});

const ghostHolder = JSON.stringify({ instanceId: 'ghost', pid: 0, acquiredAt: 0 });

function activeTimers(): number {
  return process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length;
}
