import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import { Pool } from 'pg';
import { runMigrations } from '../../src/database/migrator';
import { decodeLockValue } from '../../src/lock/lock-backend';
import { siblingKey } from '../../src/lock/lock-keys';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../support/env';
import { LockWorker } from '../support/lock-worker-process';

/** This file's own table: other files create theirs concurrently, under other names. */
const WRITES = 'lock_process_writes';
const PROCESSES = 4;
const ITERATIONS = 50;

interface Section {
  pid: number;
  /** CLOCK_MONOTONIC ns (shared by every process on the host), as decimal strings. */
  start: string;
  end: string;
  fence: number;
  inside: number;
}

describe('locks across OS processes (real Redis, real Postgres)', () => {
  const run = randomBytes(4).toString('hex');
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
  const pool = new Pool({ connectionString: TEST_DATABASE_URL, max: 2 });
  const workers: LockWorker[] = [];
  const lockKeys: string[] = [];
  const dataKeys: string[] = [];

  const lockKey = (name: string) => {
    const key = `lock:test:processes:${run}:${name}`;
    lockKeys.push(key);
    return key;
  };

  /** Started together and ready (connected to Redis and Postgres) before any command. */
  const startWorkers = async (count: number) => {
    const started = Array.from({ length: count }, () =>
      LockWorker.start(TEST_REDIS_URL, TEST_DATABASE_URL, WRITES),
    );
    workers.push(...started);
    await Promise.all(started.map((worker) => worker.next('ready', 15_000)));
    return started;
  };

  beforeAll(async () => {
    await runMigrations(TEST_DATABASE_URL, { info: () => undefined });
    await pool.query(
      `CREATE TABLE IF NOT EXISTS ${WRITES} (lock_key text NOT NULL, writer integer NOT NULL, fence bigint NOT NULL)`,
    );
  });

  afterEach(async () => {
    await Promise.all(workers.splice(0).map((worker) => worker.kill()));
  });

  afterAll(async () => {
    const keys = lockKeys.flatMap((key) => [key, siblingKey(key, 'fence')]);
    if (keys.length > 0) await redis.del(...keys, ...dataKeys);
    await pool.query('DELETE FROM lock_fences WHERE lock_key = ANY($1)', [lockKeys]);
    await pool.query(`DELETE FROM ${WRITES} WHERE lock_key = ANY($1)`, [lockKeys]);
    await redis.quit();
    await pool.end();
  });

  it(`mutual exclusion: ${PROCESSES} processes × ${ITERATIONS} withLock sections on one key never overlap`, async () => {
    const key = lockKey('mutex');
    const data = `locktest:processes:${run}:mutex`;
    dataKeys.push(`${data}:log`, `${data}:inside`, `${data}:counter`);
    const contenders = await startWorkers(PROCESSES);
    // All start contending at the same moment, not one after another as they boot.
    for (const worker of contenders) {
      worker.send({ cmd: 'mutex', key, iterations: ITERATIONS, ttlMs: 5_000, data });
    }
    const done = await Promise.all(contenders.map((worker) => worker.next('done', 25_000)));
    expect(done.map((event) => event.count)).toEqual(contenders.map(() => ITERATIONS));

    const total = PROCESSES * ITERATIONS;
    // A non-atomic read-modify-write in every section: any overlap would have lost an update.
    expect(Number(await redis.get(`${data}:counter`))).toBe(total);
    // Appended from inside the sections, so the list is in the order they ran.
    const log = (await redis.lrange(`${data}:log`, 0, -1)).map(
      (line) => JSON.parse(line) as Section,
    );
    expect(log).toHaveLength(total);
    // Nobody else was inside when each section looked.
    expect(log.filter((section) => section.inside !== 1)).toEqual([]);
    expect(new Set(log.map((section) => section.pid))).toEqual(
      new Set(contenders.map((worker) => worker.pid)),
    );

    // Sorted by start, each section ends before the next starts, and fences strictly increase
    // (consecutively: nobody else took the key, and no failed attempt consumed a fence).
    const byStart = [...log].sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : 1));
    const overlaps = byStart.filter((section, i) => {
      const previous = byStart[i - 1];
      return previous && BigInt(section.start) <= BigInt(previous.end);
    });
    expect(overlaps).toEqual([]);
    const fences = byStart.map((section) => section.fence);
    expect(fences).toEqual(fences.map((_, i) => fences[0] + i));
    expect(log.map((section) => section.fence)).toEqual(fences);

    // The processes really contended: the lock passed between them many times.
    const handovers = byStart.filter((section, i) => i > 0 && section.pid !== byStart[i - 1].pid);
    expect(handovers.length).toBeGreaterThanOrEqual(PROCESSES * 2);
  }, 30_000);

  it('a holder paused (SIGSTOP) past its TTL loses the lock, is aborted and is fenced out', async () => {
    const key = lockKey('paused');
    const [paused, successor] = await startWorkers(2);

    paused.send({ cmd: 'hold', key, ttlMs: 1_000 });
    const first = await paused.next('acquired');
    paused.signal('SIGSTOP');
    // Its lease left at the pause (a renewal still in flight could only lengthen it).
    const pausedAt = Date.now();
    const leaseLeft = await redis.pttl(key);
    expect(leaseLeft).toBeGreaterThan(0);

    successor.send({ cmd: 'take', key, ttlMs: 10_000, waitTimeoutMs: 10_000, write: true });
    await successor.next('waiting');
    const second = await successor.next('acquired');
    expect(second.fence).toBe(first.fence! + 1);
    // Not before the paused holder's lease ran out (20 ms for Redis's ms rounding).
    expect(second.at!).toBeGreaterThanOrEqual(pausedAt + leaseLeft - 20);
    expect(await successor.next('write')).toMatchObject({ ok: true });

    paused.signal('SIGCONT');
    paused.send({ cmd: 'write' });
    expect(await paused.next('write')).toMatchObject({
      ok: false,
      error: 'StaleFenceError',
      signalAborted: true,
      reason: 'LockLostError',
    });
    // The watchdog aborted the signal by itself once the process ran again.
    expect(await paused.next('lost')).toMatchObject({ reason: 'LockLostError' });
    // withLock's release on the way out must not remove the successor's lock.
    await paused.next('released');
    expect(decodeLockValue(await redis.get(key))?.pid).toBe(successor.pid);

    const { rows } = await pool.query<{ writer: number; fence: string }>(
      `SELECT writer, fence FROM ${WRITES} WHERE lock_key = $1`,
      [key],
    );
    expect(rows.map((row) => ({ writer: row.writer, fence: Number(row.fence) }))).toEqual([
      { writer: successor.pid, fence: second.fence },
    ]);

    successor.send({ cmd: 'release' });
    expect(await successor.next('released')).toMatchObject({ removed: true });
  }, 30_000);

  it('a holder killed (SIGKILL) is succeeded by a waiting process about one TTL after it acquired', async () => {
    const ttlMs = 1_500;
    const key = lockKey('killed');
    const [doomed, successor] = await startWorkers(2);

    // No renewal: the lease ends ttlMs after the acquire, whatever happens to the holder.
    doomed.send({ cmd: 'take', key, ttlMs, waitTimeoutMs: 0 });
    const first = await doomed.next('acquired');
    successor.send({ cmd: 'take', key, ttlMs: 10_000, waitTimeoutMs: 10_000 });
    await successor.next('waiting');
    await doomed.kill();
    // The kill came while the lease was still running, so only its expiry lets the successor in.
    expect(Date.now()).toBeLessThan(first.at! + ttlMs);
    expect(await redis.pttl(key)).toBeGreaterThan(0);

    const second = await successor.next('acquired');
    expect(second.fence).toBe(first.fence! + 1);
    const waited = second.at! - first.at!;
    expect(waited).toBeGreaterThanOrEqual(ttlMs - 200);
    expect(waited).toBeLessThanOrEqual(ttlMs + 1_000);
  }, 30_000);
});
