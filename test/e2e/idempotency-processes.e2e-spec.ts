import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Redis from 'ioredis';
import type { IdempotencyRecord, SingleflightOutcome } from '../../src/idempotency';
import { TEST_REDIS_URL } from '../support/env';
import { JsonLineWorker } from '../support/json-line-worker';
import { requireBuild } from '../support/service-process';
import { waitFor } from '../support/wait';

/**
 * IdempotencyService across OS processes: each test/support/idem-worker.js runs the compiled
 * service (dist/) against the shared test Redis; worker executions are counted in Redis
 * (INCR `<key>:runs`), so they are counted across processes, dead ones included.
 */

const SCRIPT = join(__dirname, '../support/idem-worker.js');

/** What the worker returns: a nonce only that execution could have produced. */
interface WorkResult {
  nonce: string;
  pid: number;
  execution: number;
}

/** One JSON line of idem-worker.js. */
interface IdemEvent {
  event: string;
  pid: number;
  /** Epoch ms, when the event was said. */
  at: number;
  id?: string;
  key?: string;
  execution?: number;
  result?: WorkResult;
  aborted?: boolean;
  calledAt?: number;
  outcome?: SingleflightOutcome<WorkResult>;
  count?: number;
  metrics?: Record<string, number>;
  leader?: boolean;
  status?: string;
  alive?: boolean;
  stored?: boolean;
  message?: string;
}

interface CallCommand {
  key: string;
  calls: number;
  workMs: number;
  /** in_progress_ttl, seconds. */
  ttl: number;
  pollMs: number;
  waitTimeoutMs?: number;
  trace?: boolean;
}

/** idem-worker.js as a child process (see JsonLineWorker). */
class IdemWorker extends JsonLineWorker<IdemEvent> {
  private calls = 0;

  static start(connectionName: string, warmupKey: string): IdemWorker {
    requireBuild();
    const child = spawn(process.execPath, [SCRIPT, TEST_REDIS_URL, connectionName, warmupKey], {
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return new IdemWorker(child, 'idem worker');
  }

  /** Starts `calls` concurrent singleflight calls; returns the id their events carry. */
  call(command: CallCommand): string {
    const id = `${this.pid}-${++this.calls}`;
    this.send({ cmd: 'call', id, ...command });
    return id;
  }

  /** The first event matching `match` (an event name or a predicate), also one already seen. */
  next(match: string | ((event: IdemEvent) => boolean), timeoutMs?: number): Promise<IdemEvent> {
    const matches = typeof match === 'string' ? (e: IdemEvent) => e.event === match : match;
    const what = typeof match === 'string' ? `"${match}"` : 'a matching event';
    return this.until((events) => events.find(matches), what, timeoutMs);
  }

  /** The `done` event of call `id`, once all its calls have returned. */
  done(id: string, timeoutMs?: number): Promise<IdemEvent> {
    return this.next((e) => e.event === 'done' && e.id === id, timeoutMs);
  }

  /** Events of call `id` (or on `key`, for traced store operations) named `name`. */
  of(name: string, idOrKey: string): IdemEvent[] {
    return this.events.filter((e) => e.event === name && (e.id === idOrKey || e.key === idOrKey));
  }
}

describe('IdempotencyService across OS processes (real Redis)', () => {
  const run = randomBytes(4).toString('hex');
  const prefix = `idem:test:processes:${run}`;
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
  const workers: IdemWorker[] = [];
  let started = 0;

  /** Processes started together, each subscribed to completions before it says ready. */
  const startWorkers = async (count: number, connectionName = `idem-test-${run}`) => {
    const batch = Array.from({ length: count }, () =>
      IdemWorker.start(connectionName, `${prefix}:warmup:${started++}`),
    );
    workers.push(...batch);
    await Promise.all(batch.map((worker) => worker.next('ready')));
    return batch;
  };

  const executions = async (key: string) => Number(await redis.get(`${key}:runs`));
  const record = async (key: string) => {
    const value = await redis.get(key);
    return value === null ? null : (JSON.parse(value) as IdempotencyRecord);
  };
  const storedResult = (stored: IdempotencyRecord | null) =>
    stored?.status === 'done' ? (JSON.parse(stored.result) as WorkResult) : undefined;
  const sum = (counts: (Record<string, number> | undefined)[]) => {
    const total: Record<string, number> = {};
    for (const [event, value] of counts.flatMap((c) => Object.entries(c ?? {}))) {
      total[event] = (total[event] ?? 0) + value;
    }
    return total;
  };

  /** The server's clients, each as its CLIENT LIST fields. */
  const clients = async () =>
    ((await redis.client('LIST')) as string)
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => {
        const fields: Record<string, string> = {};
        for (const field of line.trim().split(' ')) {
          const at = field.indexOf('=');
          fields[field.slice(0, at)] = field.slice(at + 1);
        }
        return fields;
      });

  afterEach(async () => {
    await Promise.all(workers.splice(0).map((worker) => worker.stop()));
  });

  afterAll(async () => {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    await redis.quit();
  });

  it('200 identical calls over 4 processes run the worker once; all get the identical result', async () => {
    const key = `${prefix}:herd`;
    const processes = await startWorkers(4);
    // Released together: every process is connected and subscribed before the command arrives.
    const ids = processes.map((worker) =>
      worker.call({ key, calls: 50, workMs: 300, ttl: 5, pollMs: 100 }),
    );
    const done = await Promise.all(processes.map((worker, i) => worker.done(ids[i], 20_000)));

    expect(await executions(key)).toBe(1);
    const returned = processes.flatMap((worker, i) => worker.of('returning', ids[i]));
    expect(returned).toHaveLength(1);
    const result = returned[0].result!;
    expect(result.execution).toBe(1);

    const outcomes = processes.flatMap((worker, i) => worker.of('outcome', ids[i]));
    expect(outcomes).toHaveLength(200);
    // All 200 were in flight before the worker returned.
    expect(Math.max(...outcomes.map((o) => o.calledAt!))).toBeLessThan(returned[0].at);
    for (const { outcome } of outcomes) {
      expect(outcome).toEqual({ status: 'done', result, replayed: expect.any(Boolean) });
    }
    const fresh = outcomes.filter((o) => o.outcome!.status === 'done' && !o.outcome!.replayed);
    expect(fresh).toHaveLength(1);
    expect(fresh[0].pid).toBe(result.pid);
    expect(
      outcomes.filter((o) => o.outcome!.status === 'done' && o.outcome!.replayed),
    ).toHaveLength(199);
    // One leader; everybody else waited for it (nobody came late enough for a cache hit).
    expect(sum(done.map((d) => d.metrics))).toEqual({ miss: 1, wait: 199 });
    expect(storedResult(await record(key))).toEqual(result);
  }, 30_000);

  it('a SIGKILLed leader is taken over once its record expires: exactly two executions', async () => {
    const key = `${prefix}:killed`;
    const [leader, ...late] = await startWorkers(4);
    leader.call({ key, calls: 1, workMs: 30_000, ttl: 1, pollMs: 100 });
    await leader.next('working');
    leader.signal('SIGKILL');
    await leader.exited;

    const before = Date.now();
    const leaseLeft = await redis.pttl(key);
    // The dead leader's record is still there: the late callers must wait for it to expire.
    expect(leaseLeft).toBeGreaterThan(0);
    const expiresAt = before + leaseLeft;
    const ids = late.map((worker) =>
      worker.call({ key, calls: 3, workMs: 200, ttl: 1, pollMs: 100, trace: true }),
    );
    const done = await Promise.all(late.map((worker, i) => worker.done(ids[i])));

    expect(await executions(key)).toBe(2);
    const begins = late.flatMap((worker) => worker.of('begin', key));
    // Each late caller first found the dead leader's record in progress ...
    for (const worker of late) {
      expect(worker.of('begin', key).slice(0, 3)).toEqual(
        Array(3).fill(expect.objectContaining({ leader: false, status: 'in_progress' })),
      );
    }
    // ... and exactly one took over, once the record had expired (and within a poll of that).
    const takeovers = begins.filter((b) => b.leader);
    expect(takeovers).toHaveLength(1);
    expect(takeovers[0].at).toBeGreaterThanOrEqual(expiresAt - 1);
    expect(takeovers[0].at).toBeLessThanOrEqual(expiresAt + 100 + 250);
    expect(sum(done.map((d) => d.metrics))).toEqual({ takeover: 1, wait: 8 });

    const returned = late.flatMap((worker, i) => worker.of('returning', ids[i]));
    expect(returned).toHaveLength(1);
    const result = returned[0].result!;
    expect(result.execution).toBe(2);
    const outcomes = late.flatMap((worker, i) => worker.of('outcome', ids[i]));
    expect(outcomes.map((o) => o.outcome)).toEqual(
      Array(9).fill({ status: 'done', result, replayed: expect.any(Boolean) }),
    );
    expect(storedResult(await record(key))).toEqual(result);

    // Later callers replay the result: still two executions.
    const again = late[0].call({ key, calls: 3, workMs: 200, ttl: 1, pollMs: 100 });
    expect((await late[0].done(again)).metrics).toMatchObject({ hit: 3 });
    expect(late[0].of('outcome', again).map((o) => o.outcome)).toEqual(
      Array(3).fill({ status: 'done', result, replayed: true }),
    );
    expect(await executions(key)).toBe(2);
  }, 30_000);

  it('heartbeats keep a worker running 5× its in-progress TTL from running twice', async () => {
    const key = `${prefix}:long`;
    const ttl = 0.4;
    const [leader, ...followers] = await startWorkers(4);
    const lead = leader.call({ key, calls: 1, workMs: 2_000, ttl, pollMs: 100, trace: true });
    const working = await leader.next('working');
    // Followers arrive during the run, one after the 1st heartbeat (every ttl/3), one after the
    // 5th and one after the 10th (more than three TTLs into the run).
    const ids: string[] = [];
    for (const [i, beat] of [1, 5, 10].entries()) {
      // (A lost lease ends the heartbeats: go on, and let the assertions below tell.)
      await leader.until((events) => {
        const beats = events.filter((e) => e.event === 'heartbeat' && e.key === key);
        return beats.length >= beat || beats.some((b) => !b.alive) || undefined;
      }, `heartbeat ${beat}`);
      ids.push(followers[i].call({ key, calls: 3, workMs: 200, ttl, pollMs: 100, trace: true }));
    }
    await leader.done(lead);
    const done = await Promise.all(followers.map((worker, i) => worker.done(ids[i])));

    expect(await executions(key)).toBe(1);
    const returned = leader.of('returning', lead);
    expect(returned).toHaveLength(1);
    expect(returned[0].aborted).toBe(false);
    expect(returned[0].at - working.at).toBeGreaterThanOrEqual(5 * ttl * 1000);
    const beats = leader.of('heartbeat', key);
    expect(beats.length).toBeGreaterThanOrEqual(10);
    expect(beats.every((b) => b.alive)).toBe(true);

    // Every follower found the record in progress, the last one more than three TTLs in.
    const firstBegins = followers.map((worker) => worker.of('begin', key)[0]);
    for (const begin of firstBegins) {
      expect(begin).toMatchObject({ leader: false, status: 'in_progress' });
      expect(begin.at).toBeLessThan(returned[0].at);
    }
    expect(firstBegins[2].at - working.at).toBeGreaterThan(3 * ttl * 1000);
    expect(followers.flatMap((worker) => worker.of('begin', key)).some((b) => b.leader)).toBe(
      false,
    );
    const result = returned[0].result!;
    const outcomes = followers.flatMap((worker, i) => worker.of('outcome', ids[i]));
    expect(outcomes.map((o) => o.outcome)).toEqual(
      Array(9).fill({ status: 'done', result, replayed: true }),
    );
    expect(sum(done.map((d) => d.metrics))).toEqual({ wait: 9 });
  }, 30_000);

  it('a leader SIGSTOPped until taken over cannot overwrite the newer result when resumed', async () => {
    const key = `${prefix}:paused`;
    const [paused, successor] = await startWorkers(2);
    const first = paused.call({ key, calls: 1, workMs: 1_500, ttl: 0.6, pollMs: 100, trace: true });
    await paused.next('working');
    paused.signal('SIGSTOP');

    const second = successor.call({
      key,
      calls: 1,
      workMs: 200,
      ttl: 0.6,
      pollMs: 100,
      trace: true,
    });
    // The successor takes over once the stopped leader's lease has run out, and completes.
    const newer = await waitFor(
      async () => {
        const stored = await record(key);
        return stored?.status === 'done' ? stored : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 20, what: `${key} completed by the successor` },
    );
    const newerResult = storedResult(newer)!;
    expect(newerResult).toMatchObject({ pid: successor.pid, execution: 2 });
    expect(successor.of('begin', key)[0]).toMatchObject({ leader: false, status: 'in_progress' });
    expect((await successor.done(second)).metrics).toEqual({ takeover: 1 });
    expect(successor.of('outcome', second)[0].outcome).toEqual({
      status: 'done',
      result: newerResult,
      replayed: false,
    });
    // The stopped leader has not got as far as finishing its work.
    expect(paused.of('returning', first)).toEqual([]);

    paused.signal('SIGCONT');
    const finished = await paused.done(first);
    // Its worker did finish, after the takeover, and its completion was refused ...
    const late = paused.of('returning', first);
    expect(late).toHaveLength(1);
    expect(late[0].result!.nonce).not.toBe(newerResult.nonce);
    expect(paused.of('complete', key)).toEqual([expect.objectContaining({ stored: false })]);
    expect(finished.metrics).toEqual({ miss: 1, stale_completion: 1 });
    // ... so the record is still the successor's, to the byte.
    expect(await record(key)).toEqual(newer);
    expect(storedResult(await record(key))!.nonce).toBe(newerResult.nonce);
    expect(await executions(key)).toBe(2);
  }, 30_000);

  it('a follower whose notification is lost (subscriber killed) still finishes within a poll', async () => {
    const key = `${prefix}:deaf`;
    const pollMs = 150;
    const deaf = `idem-test-${run}-deaf`;
    const [[leader], [follower]] = await Promise.all([startWorkers(1), startWorkers(1, deaf)]);
    const subscriberOf = async () =>
      (await clients()).find((c) => c.name === deaf && c.flags.includes('P'));
    const subscriber = await waitFor(subscriberOf, { what: `the pub/sub connection of ${deaf}` });

    // The completion falls anywhere in the follower's polling period.
    const workMs = 900 + Math.round(Math.random() * pollMs);
    const lead = leader.call({ key, calls: 1, workMs, ttl: 5, pollMs });
    await leader.next('working');
    const follow = follower.call({ key, calls: 1, workMs: 100, ttl: 5, pollMs, trace: true });
    // It is waiting for the leader ...
    await follower.next((e) => e.event === 'begin' && e.key === key);
    expect(follower.of('begin', key)[0]).toMatchObject({ leader: false, status: 'in_progress' });
    // ... when its subscriber connection (only that one, by name and pub/sub flag) is killed.
    expect(await redis.client('KILL', 'ID', subscriber.id)).toBe(1);
    expect(await subscriberOf()).toBeUndefined();

    const returned = await leader.next('returning');
    await leader.done(lead);
    const outcome = await follower.next((e) => e.event === 'outcome' && e.id === follow);
    expect(outcome.outcome).toEqual({ status: 'done', result: returned.result, replayed: true });
    // From the leader's worker returning (before it stored the result) to the follower returning.
    expect(outcome.at - returned.at).toBeLessThanOrEqual(pollMs + 150);
    // The notification could not have reached it: no subscriber came back meanwhile.
    expect(await subscriberOf()).toBeUndefined();
    expect(follower.of('begin', key).length).toBeGreaterThanOrEqual(3);
    expect(await executions(key)).toBe(1);
  }, 30_000);
});
