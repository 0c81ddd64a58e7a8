import { Logger } from '@nestjs/common';
import { setTimeout as delay } from 'node:timers/promises';
import { LockHandle } from '../../src/lock';
import { BackendKind, LockFixture, counterTotal, lockFixture } from '../support/locks';

/** Keeps the event loop busy, as CPU-bound work inside a lock does: timers fall due meanwhile. */
function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // spin
  }
}

/**
 * The lease promises of a held handle, under every interleaving of its own renewals, extends
 * and releases, on both backends: the handle says held (and its signal is not aborted) only
 * while the backend really holds the key for it.
 */
describe.each<BackendKind>(['redis', 'memory'])('lock lease faults (%s backend)', (kind) => {
  let fx: LockFixture;

  beforeEach(() => {
    fx = lockFixture(kind, { backoffMs: 10, maxBackoffMs: 100 });
  });

  afterEach(async () => {
    await fx.close();
  });

  it('a renewal that falls due during CPU work and is sent after a longer extend() does not shorten the lease', async () => {
    // Long enough that the extend round trip fits before the margin, even on a loaded machine.
    const ttlMs = 600;
    const key = fx.key();
    await fx.locks.withLock(
      key,
      async (handle) => {
        // The renewal (due at ttl/3) cannot run until the work ends; extend() is sent first.
        busy(ttlMs / 3 + 50);
        await handle.extend(10_000);
        // The fault interval: the short lease the late renewal would have set runs out.
        await delay(2 * ttlMs);
        const intruder = await fx.locks.tryAcquire(key, { ttlMs: 1_000 });
        const report = {
          intruderGotIt: intruder !== null,
          held: handle.held,
          aborted: handle.signal.aborted,
        };
        await intruder?.release();
        // Either way the handle must not claim a lease that someone else holds.
        expect(report).toEqual({ intruderGotIt: false, held: true, aborted: false });
        expect((await fx.locks.status(key)).ttlMs).toBeGreaterThan(5_000);
      },
      { ttlMs },
    );
    expect(await counterTotal(fx.metrics.lost)).toBe(0);
  });

  it('under random renewals, extends (awaited or not) and CPU stalls, held never outlives the real lease', async () => {
    const violations: string[] = [];
    let checks = 0;
    /** The promise, checked against the backend: while the handle says held, nobody can take the key. */
    const check = async (handle: LockHandle, key: string, when: string): Promise<boolean> => {
      // Sampled right before the intruder's request leaves: the margin kept before the local
      // deadline covers the round trip.
      const saidHeld = handle.held && !handle.signal.aborted;
      const intruder = await fx.locks.tryAcquire(key, { ttlMs: 5_000 });
      checks++;
      if (!intruder) return true;
      if (saidHeld) violations.push(`${when}: taken while the handle said held`);
      await intruder.release();
      return false;
    };
    // Handles on separate keys in parallel, so their renewals, extends and stalls interleave.
    const round = async (name: string) => {
      const key = fx.key();
      const ttl = 300 + Math.floor(Math.random() * 300);
      const handle = await fx.locks.acquire(key, { ttlMs: ttl, renew: true });
      await delay(Math.random() * ttl);
      // CPU work of random length, so renewals may fall due meanwhile; then one or two
      // extends to random lengths, longer or shorter, awaited or left in flight.
      busy(Math.random() * ttl * 0.5);
      // A lease lost to the stalls of the other handles is fine: the handle says so.
      const extend = () =>
        handle.extend(300 + Math.floor(Math.random() * 4_000)).catch((e: unknown) => e);
      const extends_ = [extend()];
      if (Math.random() < 0.3) {
        await delay(Math.random() * 5);
        extends_.push(extend());
      }
      if (Math.random() < 0.5) await Promise.all(extends_);
      // Then only the watchdog runs: a lease shortened behind the handle's back lapses now.
      const quietUntil = performance.now() + 2 * ttl;
      while (performance.now() < quietUntil) {
        if (!(await check(handle, key, name))) break;
        await delay(20);
      }
      await Promise.all(extends_);
      await handle.release();
    };
    for (let batch = 0; batch < 2; batch++) {
      await Promise.all(Array.from({ length: 8 }, (_, i) => round(`batch ${batch}, handle ${i}`)));
    }
    expect(violations).toEqual([]);
    // Every handle was checked at least once.
    expect(checks).toBeGreaterThanOrEqual(16);
  }, 20_000);

  it('refuses TTLs and waits that are not whole milliseconds, or beyond what a timer can hold', async () => {
    const key = fx.key();
    for (const ttlMs of [1.5, 0, -1, Number.NaN, Infinity, 2 ** 31]) {
      await expect(fx.locks.acquire(key, { ttlMs })).rejects.toThrow(/ttlMs/);
      await expect(fx.locks.tryAcquire(key, { ttlMs })).rejects.toThrow(/ttlMs/);
      await expect(fx.locks.withLock(key, () => 1, { ttlMs })).rejects.toThrow(/ttlMs/);
    }
    for (const waitTimeoutMs of [0.5, -1, Number.NaN]) {
      await expect(fx.locks.acquire(key, { waitTimeoutMs })).rejects.toThrow(/waitTimeoutMs/);
    }
    expect((await fx.locks.status(key)).locked).toBe(false);

    // The largest TTL a timer can hold is accepted, and renewal stays at its ttl/3 pace.
    const longest = await fx.locks.acquire(key, { ttlMs: 2 ** 31 - 1, renew: true });
    const extends_ = jest.spyOn(fx.backend, 'extend');
    await delay(100);
    expect(extends_).not.toHaveBeenCalled();
    for (const ttlMs of [2.5, 2 ** 31, 0]) {
      await expect(longest.extend(ttlMs)).rejects.toThrow(/ttlMs/);
    }
    expect(longest.signal.aborted).toBe(false);
    await longest.release();
    extends_.mockRestore();
  });

  it('force-release acts only on the holder with the fence the operator saw, also when run twice', async () => {
    const key = fx.key();
    const seen = await fx.locks.acquire(key, { ttlMs: 10_000, operation: 'seen' });
    const first = await fx.locks.forceRelease(key, { fence: seen.fence, by: 'test' });
    expect(first).toMatchObject({
      released: true,
      previousHolder: { operation: 'seen' },
      fence: seen.fence + 1,
    });
    const next = await fx.locks.acquire(key, { ttlMs: 10_000, operation: 'next' });

    // The same release again (a resent script, a retried request): the next holder stays.
    expect(await fx.backend.forceRelease(key, seen.fence)).toMatchObject(first);
    expect(await fx.locks.forceRelease(key, { fence: seen.fence })).toMatchObject(first);
    expect((await fx.locks.status(key)).holder?.operation).toBe('next');
    expect(next.held).toBe(true);

    // A fence that was never this holder's: refused, nothing changes.
    const stale = await fx.locks
      .forceRelease(key, { fence: next.fence - 1 })
      .catch((error: unknown) => error);
    expect(stale).toMatchObject({ name: 'LockHolderChangedError', currentFence: next.fence });
    expect((await fx.locks.status(key)).holder?.operation).toBe('next');

    // Without a fence: whoever holds it now, once.
    expect(await fx.locks.forceRelease(key)).toMatchObject({
      released: true,
      previousHolder: { operation: 'next' },
      fence: next.fence + 1,
    });
    expect(await fx.locks.forceRelease(key)).toMatchObject({ released: false });
    // Each call that reported a release (the repeat too; its hook runs again, harmlessly).
    expect(await counterTotal(fx.metrics.forcedReleases)).toBe(3);
  });

  it('writes the audit line even when the force-release hook throws', async () => {
    const failing = lockFixture(kind, {
      onForceRelease: () => Promise.reject(new Error('fence store down')),
    });
    const audit = jest.spyOn(Logger.prototype, 'warn');
    try {
      const key = failing.key();
      const holder = await failing.locks.acquire(key, { ttlMs: 10_000, operation: 'stuck' });
      await expect(failing.locks.forceRelease(key, { by: 'ops' })).rejects.toThrow(
        'fence store down',
      );
      expect(audit).toHaveBeenCalledWith(
        expect.objectContaining({
          msg: 'lock force-release',
          audit: true,
          lock_key: key,
          released: true,
          previous_holder: expect.objectContaining({ operation: 'stuck' }) as unknown,
          fence: holder.fence + 1,
          by: 'ops',
        }),
      );
    } finally {
      audit.mockRestore();
      await failing.close();
    }
  });
});
