import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { IdempotencyResultError, IdempotencyUsageError } from '../../src/idempotency';
import { IdempotencyFixture, StoreKind, idempotencyFixture } from '../support/idempotency';
import { waitFor } from '../support/wait';

const config = { scope: 'test', wait_timeout_ms: 10_000, poll_interval_ms: 50 };

/** One contract, two stores: memory must behave as Redis does, in one process. */
describe.each<StoreKind>(['redis', 'memory'])('IdempotencyService contract (%s store)', (kind) => {
  let fx: IdempotencyFixture;

  beforeEach(() => {
    fx = idempotencyFixture(kind);
  });

  afterEach(async () => {
    await fx.close();
  });

  it('runs the worker once for concurrent callers, who all get the identical result', async () => {
    const key = fx.key();
    let runs = 0;
    const worker = async () => {
      runs++;
      await delay(100);
      return { nonce: randomUUID(), items: [1, 2, 3] };
    };
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, () => fx.idem.singleflight(key, worker, config)),
    );
    expect(runs).toBe(1);
    const results = outcomes.map((o) => (o.status === 'done' ? o.result : undefined));
    expect(new Set(results.map((r) => JSON.stringify(r))).size).toBe(1);
    expect(outcomes.filter((o) => o.status === 'done' && !o.replayed)).toHaveLength(1);
    expect(await fx.events('miss')).toBe(1);
    expect(await fx.events('wait')).toBe(49);

    // Later callers replay the cached result without running the worker.
    const later = await fx.idem.singleflight(key, worker, config);
    expect(later).toEqual({ status: 'done', result: results[0], replayed: true });
    expect(runs).toBe(1);
    expect(await fx.events('hit')).toBe(1);
  });

  it('leaves nothing behind when the worker throws: the next call runs again', async () => {
    const key = fx.key();
    await expect(
      fx.idem.singleflight(key, () => Promise.reject(new Error('worker failed')), config),
    ).rejects.toThrow('worker failed');
    expect(await fx.idem.peek(key)).toBeNull();
    const outcome = await fx.idem.singleflight(key, () => Promise.resolve('second'), config);
    expect(outcome).toEqual({ status: 'done', result: 'second', replayed: false });
    expect(await fx.events('worker_error')).toBe(1);
  });

  it('wakes followers waiting on a failed leader, one of whom runs the worker', async () => {
    const key = fx.key();
    let runs = 0;
    const leader = fx.idem.singleflight(
      key,
      async () => {
        runs++;
        await delay(100);
        throw new Error('first run failed');
      },
      config,
    );
    await waitFor(async () => (await fx.idem.peek(key))?.status === 'in_progress');
    const followers = Array.from({ length: 5 }, () =>
      fx.idem.singleflight(
        key,
        async () => {
          runs++;
          await delay(50);
          return 'recovered';
        },
        config,
      ),
    );
    await expect(leader).rejects.toThrow('first run failed');
    const outcomes = await Promise.all(followers);
    expect(outcomes.every((o) => o.status === 'done' && o.result === 'recovered')).toBe(true);
    expect(runs).toBe(2);
  });

  it('refuses results that are not plain JSON, with a clear error, and caches nothing', async () => {
    const key = fx.key();
    for (const [value, where] of [
      [{ at: new Date() }, 'result.at is a Date'],
      [{ n: Number.NaN }, 'result.n is NaN'],
      [{ list: [1, new Map()] }, 'result.list[1] is a Map'],
      [{ f: () => 1 }, 'result.f is a function'],
    ] as const) {
      await expect(fx.idem.singleflight(key, () => Promise.resolve(value), config)).rejects.toThrow(
        new IdempotencyResultError(`result of ${key} is not JSON-serialisable: ${where}`),
      );
      expect(await fx.idem.peek(key)).toBeNull();
    }
    const nothing = await fx.idem.singleflight(key, () => Promise.resolve(undefined), config);
    expect(nothing).toEqual({ status: 'done', result: null, replayed: false });
  });

  it('gives followers a timeout outcome, not an error, when the leader outlasts their wait', async () => {
    const key = fx.key();
    const leader = fx.idem.singleflight(
      key,
      async () => {
        await delay(600);
        return 'slow';
      },
      config,
    );
    await waitFor(async () => (await fx.idem.peek(key))?.status === 'in_progress');
    const follower = await fx.idem.singleflight(key, () => Promise.resolve('never'), {
      ...config,
      wait_timeout_ms: 150,
    });
    expect(follower.status).toBe('timeout');
    expect(follower.status === 'timeout' && follower.waitedMs).toBeGreaterThanOrEqual(150);
    expect(await leader).toEqual({ status: 'done', result: 'slow', replayed: false });
  });

  it('heartbeats a worker that outlasts its in-progress TTL, so it never runs twice', async () => {
    const key = fx.key();
    let runs = 0;
    const settings = { ...config, in_progress_ttl: 0.2 };
    const worker = async () => {
      runs++;
      await delay(1_000);
      return 'long';
    };
    const leader = fx.idem.singleflight(key, worker, settings);
    const late: Promise<unknown>[] = [];
    for (let i = 0; i < 5; i++) {
      await delay(150);
      late.push(fx.idem.singleflight(key, worker, settings));
    }
    await Promise.all([leader, ...late]);
    expect(runs).toBe(1);
  });

  it('takes over from a leader that died (its record expired), exactly once', async () => {
    const key = fx.key();
    // A leader that wrote its record and vanished without heartbeating.
    await fx.store.begin(
      key,
      { status: 'in_progress', scope: 'test', owner: 'dead', started_at: Date.now() },
      300,
      false,
    );
    let runs = 0;
    const callers = Array.from({ length: 5 }, () =>
      fx.idem.singleflight(
        key,
        async () => {
          runs++;
          await delay(50);
          return 'taken over';
        },
        config,
      ),
    );
    const outcomes = await Promise.all(callers);
    expect(runs).toBe(1);
    expect(outcomes.every((o) => o.status === 'done' && o.result === 'taken over')).toBe(true);
    expect(await fx.events('takeover')).toBe(1);
  });

  it('never lets a stale leader overwrite or clear a newer record', async () => {
    const key = fx.key();
    const record = (owner: string) => ({
      status: 'in_progress' as const,
      scope: 'test',
      owner,
      started_at: Date.now(),
    });
    expect(await fx.store.begin(key, record('old'), 100, false)).toEqual({ leader: true });
    await waitFor(async () => (await fx.store.get(key)) === null, { intervalMs: 20 });
    expect(await fx.store.begin(key, record('new'), 10_000, false)).toEqual({ leader: true });
    const done = { ...record('old'), status: 'done' as const, completed_at: 0, result: '"old"' };
    expect(await fx.store.complete(key, 'old', done, 10_000)).toBe(false);
    expect(await fx.store.abandon(key, 'old')).toBe(false);
    expect(await fx.store.heartbeat(key, 'old', 10_000)).toBe(false);
    expect(await fx.store.get(key)).toMatchObject({ status: 'in_progress', owner: 'new' });
  });

  it('forgets a completed result on request, but never a run in progress', async () => {
    const key = fx.key();
    const running = { status: 'in_progress' as const, scope: 'test', owner: 'a', started_at: 0 };
    expect(await fx.store.begin(key, running, 10_000, false)).toEqual({ leader: true });
    expect(await fx.store.forgetResult(key)).toBe(false);
    const done = { ...running, status: 'done' as const, completed_at: 0, result: '"a"' };
    expect(await fx.store.complete(key, 'a', done, 10_000)).toBe(true);
    expect(await fx.store.forgetResult(key)).toBe(true);
    expect(await fx.store.get(key)).toBeNull();
    expect(await fx.store.forgetResult(key)).toBe(false);
  });

  it('force re-runs a cached result, but concurrent forced calls still run one worker', async () => {
    const key = fx.key();
    let runs = 0;
    const worker = async () => {
      runs++;
      await delay(100);
      return runs;
    };
    await fx.idem.singleflight(key, worker, config);
    const forced = await Promise.all(
      Array.from({ length: 10 }, () =>
        fx.idem.singleflight(key, worker, { ...config, force: true }),
      ),
    );
    expect(runs).toBe(2);
    expect(forced.every((o) => o.status === 'done' && o.result === 2)).toBe(true);
  });

  it('refuses keys outside the prefix and a key reused under another scope', async () => {
    await expect(
      fx.idem.singleflight('vector:x', () => Promise.resolve(1), config),
    ).rejects.toBeInstanceOf(IdempotencyUsageError);
    const key = fx.key();
    await fx.idem.singleflight(key, () => Promise.resolve(1), config);
    await expect(
      fx.idem.singleflight(key, () => Promise.resolve(1), { ...config, scope: 'other' }),
    ).rejects.toThrow('belongs to scope test');
  });
});

describe('IdempotencyService on Redis: notifications', () => {
  it('wakes followers on completion well before their polling interval', async () => {
    const fx = idempotencyFixture('redis');
    try {
      const key = fx.key();
      const leader = fx.idem.singleflight(
        key,
        async () => {
          await delay(200);
          return 'done';
        },
        config,
      );
      await waitFor(async () => (await fx.idem.peek(key))?.status === 'in_progress');
      const startedWaiting = Date.now();
      const follower = fx.idem.singleflight(key, () => Promise.resolve('never'), {
        ...config,
        poll_interval_ms: 5_000,
      });
      await leader;
      const completedAt = Date.now();
      expect(await follower).toEqual({ status: 'done', result: 'done', replayed: true });
      expect(Date.now() - completedAt).toBeLessThan(1_000);
      expect(Date.now() - startedWaiting).toBeLessThan(2_000);
    } finally {
      await fx.close();
    }
  });
});
