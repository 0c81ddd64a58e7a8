/**
 * Lock benchmark: this service's LockService side by side with a raw ioredis baseline and peer
 * libraries, in one run, on the local Redis (db 14).
 *   npm run bench:lock   (uncontended: BENCH_ROUNDS=9 of BENCH_UNCONTENDED_SECONDS=2 each, after
 *   a warm-up; contended: BENCH_CONTENDED_ROUNDS=3 of BENCH_SECONDS=3)
 */
import { randomBytes } from 'node:crypto';
import { Redlock as SesameRedlock } from '@sesamecare-oss/redlock';
import Redis from 'ioredis';
import Redlock4 from 'redlock';
import { Mutex } from 'redis-semaphore';
import { LockMetrics } from '../src/lock/lock.metrics';
import { LockService } from '../src/lock/lock.service';
import { RedisLockBackend } from '../src/lock/redis-lock.backend';
import { median, percentile, sleep, table, verdict } from './support/stats';

const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const TTL = 10_000;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 9);
const UNCONTENDED_SECONDS = Number(process.env.BENCH_UNCONTENDED_SECONDS ?? 2);
const CONTENDED_ROUNDS = Number(process.env.BENCH_CONTENDED_ROUNDS ?? 3);

const rotate = <T>(items: T[], by: number) => [
  ...items.slice(by % items.length),
  ...items.slice(0, by % items.length),
];

/** One implementation: take a key (waiting if needed), give back a release function. */
interface Contender {
  name: string;
  acquire(key: string): Promise<() => Promise<unknown>>;
  close(): Promise<void>;
}

const COMPARE_AND_DELETE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

function raw(): Contender {
  const redis = new Redis(REDIS_URL);
  redis.defineCommand('benchRelease', { numberOfKeys: 1, lua: COMPARE_AND_DELETE });
  const release = (
    redis as unknown as { benchRelease(k: string, t: string): Promise<number> }
  ).benchRelease.bind(redis);
  // Unique tokens as cheap as LockService's (random prefix + counter): the baseline must not
  // pay for a random draw per acquisition that the measured library does not.
  const tokenPrefix = `${randomBytes(12).toString('base64url')}.`;
  let sequence = 0;
  return {
    name: 'raw ioredis (SET NX PX + Lua del)',
    acquire: async (key) => {
      const token = tokenPrefix + (sequence++).toString(36);
      while ((await redis.set(key, token, 'PX', TTL, 'NX')) !== 'OK') await sleep(2);
      return () => release(key, token);
    },
    close: () => redis.quit().then(() => undefined),
  };
}

function ours(fair: boolean): Contender {
  const redis = new Redis(REDIS_URL);
  const locks = new LockService(
    new RedisLockBackend(redis, 'lock:__released'),
    { backend: 'redis', redis },
    new LockMetrics(),
  );
  return {
    name: fair ? 'LockService (fair)' : 'LockService',
    acquire: async (key) => {
      const handle = await locks.acquire(key, { ttlMs: TTL, waitTimeoutMs: 60_000, fair });
      return () => handle.release();
    },
    close: async () => {
      await locks.onApplicationShutdown();
      await redis.quit();
    },
  };
}

function sesame(): Contender {
  const redis = new Redis(REDIS_URL);
  const redlock = new SesameRedlock([redis], {
    retryCount: 100_000,
    retryDelay: 10,
    retryJitter: 5,
  });
  return {
    name: '@sesamecare-oss/redlock',
    acquire: async (key) => {
      const lock = await redlock.acquire([key], TTL);
      return () => lock.release();
    },
    close: () => redis.quit().then(() => undefined),
  };
}

function redlock4(): Contender {
  const redis = new Redis(REDIS_URL);
  const redlock = new Redlock4([redis as unknown as Redlock4.CompatibleRedisClient], {
    retryCount: 100_000,
    retryDelay: 10,
    retryJitter: 5,
  });
  return {
    name: 'redlock 4',
    acquire: async (key) => {
      const lock = await redlock.lock(key, TTL);
      return () => lock.unlock();
    },
    close: () => redis.quit().then(() => undefined),
  };
}

function semaphore(): Contender {
  const redis = new Redis(REDIS_URL);
  return {
    name: 'redis-semaphore Mutex',
    acquire: async (key) => {
      const mutex = new Mutex(redis, key, {
        lockTimeout: TTL,
        acquireTimeout: 60_000,
        retryInterval: 10,
        refreshInterval: 0,
      });
      await mutex.acquire();
      return () => mutex.release();
    },
    close: () => redis.quit().then(() => undefined),
  };
}

const FACTORIES: Record<string, () => Contender> = {
  raw,
  ours: () => ours(false),
  sesame,
  redlock4,
  semaphore,
};

const LABELS: Record<string, string> = {
  raw: 'raw ioredis (SET NX PX + Lua del)',
  ours: 'LockService',
  'ours-fair': 'LockService (fair)',
  sesame: '@sesamecare-oss/redlock',
  redlock4: 'redlock 4',
  semaphore: 'redis-semaphore Mutex',
};

/** 16 workers on distinct keys, acquire + release as fast as they can. */
async function uncontended(make: () => Contender, seconds = UNCONTENDED_SECONDS) {
  const contender = make();
  const run = randomBytes(3).toString('hex');
  const latencies: number[] = [];
  let cycles = 0;
  const cpuBefore = process.cpuUsage();
  const deadline = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: 16 }, async (_, worker) => {
      const key = `lock:bench:${run}:u${worker}`;
      while (performance.now() < deadline) {
        const started = performance.now();
        const release = await contender.acquire(key);
        await release();
        latencies.push(performance.now() - started);
        cycles++;
      }
    }),
  );
  const cpu = process.cpuUsage(cpuBefore);
  await contender.close();
  return {
    perSecond: cycles / seconds,
    // What the library itself costs: the client process's CPU per cycle (user + system).
    cpuMicros: (cpu.user + cpu.system) / cycles,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
  };
}

/** 64 waiters on one key: hold 1 ms, ask again 2 ms after releasing. */
async function contended(make: () => Contender) {
  const contender = make();
  const key = `lock:bench:${randomBytes(3).toString('hex')}:c`;
  const handoffs: number[] = [];
  const waits: number[] = [];
  const perWaiter = new Array<number>(64).fill(0);
  let releasedAt: number | undefined;
  let stop = false;
  const deadline = performance.now() + SECONDS * 1000;
  setTimeout(() => (stop = true), SECONDS * 1000);
  await Promise.all(
    perWaiter.map(async (_, waiter) => {
      while (!stop) {
        const asked = performance.now();
        const release = await contender.acquire(key);
        const got = performance.now();
        if (got < deadline) {
          waits.push(got - asked);
          if (releasedAt !== undefined) handoffs.push(got - releasedAt);
          perWaiter[waiter]++;
        }
        await sleep(1);
        releasedAt = performance.now();
        await release();
        await sleep(2);
      }
    }),
  );
  await contender.close();
  return {
    acquisitions: perWaiter.reduce((a, b) => a + b, 0),
    handoffP50: percentile(handoffs, 50),
    handoffP99: percentile(handoffs, 99),
    waitP99: percentile(waits, 99),
    starved: perWaiter.filter((count) => count === 0).length,
  };
}

async function main() {
  const flush = new Redis(REDIS_URL);
  await flush.flushdb();
  console.log(`# Lock benchmark (Redis ${REDIS_URL})\n`);

  const names = Object.keys(FACTORIES);
  const runs: Record<string, Awaited<ReturnType<typeof uncontended>>[]> = {};
  // Each implementation runs once unmeasured first, so no measured round pays for a cold JIT.
  for (const name of names) await uncontended(FACTORIES[name], 1);
  // The order rotates each round, so no implementation always runs first or last.
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of rotate(names, round)) {
      (runs[name] ??= []).push(await uncontended(FACTORIES[name]));
    }
  }
  const uncontendedRate = (name: string) => median(runs[name].map((run) => run.perSecond));
  // Ratios are paired by round (both measured minutes apart at most), then the median taken:
  // this machine's speed drifts by 2× between rounds, which a ratio of medians would absorb.
  const pairedRatios = (name: string, baseline: string) =>
    runs[name].map((run, round) => run.perSecond / runs[baseline][round].perSecond);
  const ratio = (name: string, baseline: string) => median(pairedRatios(name, baseline));
  // The median, and the spread of the paired rounds it was taken from.
  const measured = (name: string, baseline: string) => {
    const ratios = pairedRatios(name, baseline);
    return `${ratio(name, baseline).toFixed(2)}× (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`;
  };
  const rows = names.map((name) => {
    return [
      LABELS[name],
      uncontendedRate(name),
      median(runs[name].map((run) => run.p50)),
      median(runs[name].map((run) => run.p99)),
      median(runs[name].map((run) => run.cpuMicros)),
      ratio(name, 'raw'),
    ];
  });
  console.log(
    `## Uncontended: 16 workers on distinct keys (median of ${ROUNDS} runs of ${UNCONTENDED_SECONDS} s)\n`,
  );
  console.log(
    table(
      ['implementation', 'cycles/s', 'p50 ms', 'p99 ms', 'Node CPU µs/cycle', '× raw (paired)'],
      rows,
    ),
  );

  console.log(
    `\n## Contended: 64 waiters on one key, 1 ms hold, re-ask 2 ms after release (median of ${CONTENDED_ROUNDS} runs of ${SECONDS} s; starved: worst run)\n`,
  );
  const contenders: Record<string, () => Contender> = {
    ...FACTORIES,
    'ours-fair': () => ours(true),
  };
  const contendedRuns: Record<string, Awaited<ReturnType<typeof contended>>[]> = {};
  for (let round = 0; round < CONTENDED_ROUNDS; round++) {
    for (const name of rotate(Object.keys(contenders), round)) {
      (contendedRuns[name] ??= []).push(await contended(contenders[name]));
    }
  }
  // Medians per column; starved waiters: the worst run, since one starving run is a failure.
  const contendedResults = Object.fromEntries(
    Object.entries(contendedRuns).map(([name, results]) => [
      name,
      {
        acquisitions: median(results.map((r) => r.acquisitions)),
        handoffP50: median(results.map((r) => r.handoffP50)),
        handoffP99: median(results.map((r) => r.handoffP99)),
        waitP99: median(results.map((r) => r.waitP99)),
        starved: Math.max(...results.map((r) => r.starved)),
      },
    ]),
  );
  const contendedRows = Object.keys(contenders).map((name) => {
    const result = contendedResults[name];
    return [
      LABELS[name],
      result.acquisitions,
      result.handoffP50,
      result.handoffP99,
      result.waitP99,
      result.starved,
    ];
  });
  console.log(
    table(
      [
        'implementation',
        'acquisitions',
        'hand-off p50 ms',
        'hand-off p99 ms',
        'wait p99 ms',
        'starved of 64',
      ],
      contendedRows,
    ),
  );

  console.log('\n## Targets\n');
  console.log(
    table(
      ['target', 'measured: median (spread of paired rounds)', 'verdict'],
      [
        ['uncontended ≥ 0.9× raw', measured('ours', 'raw'), verdict(ratio('ours', 'raw') >= 0.9)],
        [
          'uncontended ≥ 1.1× redis-semaphore',
          measured('ours', 'semaphore'),
          verdict(ratio('ours', 'semaphore') >= 1.1),
        ],
        [
          'uncontended ≥ 1.25× @sesamecare-oss/redlock',
          measured('ours', 'sesame'),
          verdict(ratio('ours', 'sesame') >= 1.25),
        ],
        [
          'uncontended ≥ 1.25× redlock 4',
          measured('ours', 'redlock4'),
          verdict(ratio('ours', 'redlock4') >= 1.25),
        ],
        [
          'hand-off p50 ≤ 2 ms',
          `${contendedResults.ours.handoffP50.toFixed(2)} ms`,
          verdict(contendedResults.ours.handoffP50 <= 2),
        ],
        [
          'fair mode: no starved waiter',
          `${contendedResults['ours-fair'].starved}`,
          verdict(contendedResults['ours-fair'].starved === 0),
        ],
      ],
    ),
  );
  await flush.flushdb();
  await flush.quit();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
