import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import Redis from 'ioredis';
import type { IdempotencyRecord } from '../../src/idempotency';
import { TEST_REDIS_URL } from '../support/env';
import {
  FaultEvent,
  FaultWorker,
  FaultWorkResult,
  FaultWorkerSettings,
  redisServerPid,
} from '../support/idem-fault-workers';
import { PrivateRedis } from '../support/redis-server';

/**
 * One key, one answer, with real processes: an @Idempotent method runs in OS processes
 * (test/support/idem-fault-worker.js); the leader is paused with SIGSTOP past its in-progress
 * lease, or its Redis is paused, while another process takes over. Whatever the leader's own
 * method returns afterwards, its caller gets the key's stored outcome or an error, and the method
 * is told through IdempotencyService.currentSignal() that its lease is gone.
 */

const LEASE_S = 0.6;

describe('@Idempotent leaders that lose their lease (SIGSTOP, paused Redis)', () => {
  const run = randomBytes(4).toString('hex');
  const prefix = `idem:test:faults:${run}`;
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
  const workers: FaultWorker[] = [];

  const start = async (count: number, redisUrl = TEST_REDIS_URL, ttl = LEASE_S) => {
    const settings: FaultWorkerSettings = {
      redisUrl,
      ttl,
      pollMs: 100,
      waitTimeoutMs: 20_000,
    };
    const started = await FaultWorker.startMany(count, settings);
    workers.push(...started);
    return started;
  };

  /** The call's answer: its `outcome` or `failed` event, whichever it said. */
  const answerOf = (worker: FaultWorker, id: string) =>
    worker.until(
      (events) =>
        events.find((e) => (e.event === 'outcome' || e.event === 'failed') && e.id === id),
      `the answer of ${id}`,
    );

  const record = async (client: Redis, key: string) => {
    const value = await client.get(key);
    return value === null ? null : (JSON.parse(value) as IdempotencyRecord);
  };
  const storedResult = (stored: IdempotencyRecord | null) =>
    stored?.status === 'done' ? (JSON.parse(stored.result) as FaultWorkResult) : undefined;

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

  it('a resumed leader whose successor completed returns the stored result, never its own', async () => {
    const key = `${prefix}:stored`;
    const [paused, successor] = await start(2);
    const first = paused.call(key, 1_500);
    const working = await paused.next('working', first);
    paused.signal('SIGSTOP');

    // Its lease runs out; the successor takes over, runs and stores its result.
    const second = successor.call(key, 200);
    const taken = await successor.next('outcome', second, 10_000);
    expect(taken.outcome).toEqual({
      status: 'done',
      replayed: false,
      result: expect.objectContaining({ pid: successor.pid, execution: 2 }),
    });
    const newer = (taken.outcome as { result: FaultWorkResult }).result;
    expect(paused.of('returning', first)).toEqual([]);

    paused.signal('SIGCONT');
    const answer = await answerOf(paused, first);
    // Its method did finish with a private result ...
    const [returned] = paused.of('returning', first);
    expect(returned.result!.nonce).not.toBe(newer.nonce);
    // ... but its caller got the key's one stored outcome.
    expect(answer).toMatchObject({
      event: 'outcome',
      outcome: { status: 'done', result: newer, replayed: true },
    });
    // The refused completion is logged and counted; the stored record is untouched.
    expect(paused.output).toMatch(new RegExp(`${key}: .*not stored`));
    expect((await paused.next('done', first)).metrics).toEqual({ miss: 1, stale_completion: 1 });
    expect(storedResult(await record(redis, key))).toEqual(newer);
    expect(Number(await redis.get(`${key}:runs`))).toBe(2);

    // The method could see that it had lost its lease: the signal was aborted before it returned.
    expect(working.hasSignal).toBe(true);
    const aborted = paused.of('aborted', first);
    expect(aborted).toEqual([expect.objectContaining({ reason: expect.stringContaining(key) })]);
    expect(aborted[0].at).toBeLessThanOrEqual(returned.at);
    expect(returned.aborted).toBe(true);
  }, 30_000);

  it('a resumed leader whose successor still runs fails with a takeover error, never its own result', async () => {
    const key = `${prefix}:running`;
    const [paused, successor] = await start(2);
    const first = paused.call(key, 1_000);
    await paused.next('working', first);
    paused.signal('SIGSTOP');

    const second = successor.call(key, 3_000);
    expect(await successor.next('working', second, 10_000)).toMatchObject({ execution: 2 });
    paused.signal('SIGCONT');

    const answer = await answerOf(paused, first);
    expect(paused.of('returning', first)).toHaveLength(1);
    expect(answer).toMatchObject({
      event: 'failed',
      name: 'IdempotencyLeaseLostError',
      message: expect.stringMatching(/taken over.*still running/),
    });
    expect(paused.of('aborted', first)).toHaveLength(1);

    // The successor's run is the key's outcome, for it and for everyone after.
    const taken = await successor.next('outcome', second, 10_000);
    expect(taken.outcome).toMatchObject({ status: 'done', replayed: false });
    const result = (taken.outcome as { result: FaultWorkResult }).result;
    expect(result).toMatchObject({ pid: successor.pid, execution: 2 });
    expect(storedResult(await record(redis, key))).toEqual(result);
    const again = paused.call(key, 100);
    expect((await paused.next('outcome', again)).outcome).toEqual({
      status: 'done',
      result,
      replayed: true,
    });
  }, 30_000);

  it('a leader whose Redis stops answering is aborted before its lease can expire, and fails', async () => {
    const server = await PrivateRedis.start();
    const admin = new Redis(server.url, { maxRetriesPerRequest: 1 });
    try {
      const pid = await redisServerPid(admin);
      const key = `${prefix}:unreachable`;
      // A longer lease here: the abort is due a margin (lease/10) before it runs out.
      const leaseMs = 1_200;
      const [leader] = await start(1, server.url, leaseMs / 1000);
      const first = leader.call(key, 2_500);
      await leader.next('working', first);

      process.kill(pid, 'SIGSTOP');
      const stoppedAt = Date.now();
      let aborted: FaultEvent;
      try {
        // Renewals get no answer: the method is told before the record can expire (the last
        // renewal Redis executed was before the stop).
        aborted = await leader.next('aborted', first, 3_000);
        // Keep Redis stopped until the record has certainly expired.
        await delay(Math.max(0, stoppedAt + leaseMs + 150 - Date.now()));
      } finally {
        process.kill(pid, 'SIGCONT');
      }
      expect(aborted.at - stoppedAt).toBeLessThan(leaseMs);
      expect(aborted.reason).toMatch(/could not be renewed/);

      const answer = await answerOf(leader, first);
      expect(answer).toMatchObject({ event: 'failed', name: 'IdempotencyLeaseLostError' });
      expect(leader.of('returning', first)).toEqual([expect.objectContaining({ aborted: true })]);
      // Nothing was stored for the lost run: the next caller runs it again.
      expect(await record(admin, key)).toBeNull();
    } finally {
      admin.disconnect();
      await server.kill();
    }
  }, 30_000);
});
