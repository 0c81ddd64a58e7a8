/* One process of the lock torture test (test/e2e/lock-torture.e2e-spec.ts), on compiled code
 * from dist/. Runs for a bounded time, then prints one JSON line {summary: ...} and exits 0.
 *   node lock-torture-worker.js '<json settings>'
 * settings: {role: 'holder' | 'forcer', redisUrl, databaseUrl, key, table, durationMs}
 *
 * holder: takes the key again and again (withLock: renewed every ttl/3) with random TTLs; while
 *   holding, mixes sleeps (renewals run), CPU stalls (renewals fall due late) and extends to
 *   random lengths (awaited or left in flight) with fenced writes: each inserts (holder, fence,
 *   seq) into `table` inside PostgresFencing.transaction. A write refused as stale ends the hold;
 *   it is reported with whether the handle still said it held the lock at that moment. Before
 *   each write it also looks at the key in Redis: found not ours while the handle, asked just
 *   after, still says held, it is reported (`unheld`).
 * forcer: now and then reads the lock's status and force-releases the holder it saw (by its
 *   fence), raising the fence recorded in Postgres as the service does; reports the fences of
 *   the holders it removed.
 * Library log lines go to stderr. */
const { setTimeout: sleep } = require('node:timers/promises');
const Redis = require('ioredis');
const { Pool } = require('pg');
const { RedisLockBackend } = require('../../dist/lock/redis-lock.backend');
const { LockService } = require('../../dist/lock/lock.service');
const { LockMetrics } = require('../../dist/lock/lock.metrics');
const { PostgresFencing } = require('../../dist/lock/postgres-fencing');
const {
  LockHolderChangedError,
  LockLostError,
  LockNotAcquiredError,
  StaleFenceError,
} = require('../../dist/lock/lock.errors');

// Nest's default logger writes to stdout; the summary line must stay alone there.
const { Logger } = require('@nestjs/common');
Logger.overrideLogger({
  log: () => undefined,
  error: (message) => process.stderr.write(`${String(message)}\n`),
  warn: (message) => process.stderr.write(`${JSON.stringify(message)}\n`),
  debug: () => undefined,
  verbose: () => undefined,
});

const settings = JSON.parse(process.argv[2]);
const { role, redisUrl, databaseUrl, key, table, durationMs } = settings;
const random = (min, max) => min + Math.floor(Math.random() * (max - min));

/** CPU work inside the lock: timers, renewals among them, fall due meanwhile. */
function busy(ms) {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // spin
  }
}

const redis = new Redis(redisUrl, {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 1,
  retryStrategy: () => 50,
});
const pool = new Pool({ connectionString: databaseUrl, max: 2 });
const fencing = new PostgresFencing();
const locks = new LockService(
  new RedisLockBackend(redis, 'lock:__released'),
  {
    backend: 'redis',
    redis,
    backoffMs: 10,
    maxBackoffMs: 100,
    onForceRelease: ({ key: forcedKey, fence }) => fencing.advance(pool, { key: forcedKey, fence }),
  },
  new LockMetrics(),
);

async function holder(deadline) {
  const summary = {
    holds: 0,
    writes: 0,
    extends: 0,
    checks: 0,
    stale: [],
    unheld: [],
    lost: 0,
    timeouts: 0,
  };
  while (Date.now() < deadline) {
    try {
      await locks.withLock(
        key,
        async (handle) => {
          summary.holds++;
          const pending = [];
          const writes = random(1, 6);
          for (let seq = 1; seq <= writes && Date.now() < deadline; seq++) {
            const roll = Math.random();
            if (roll < 0.3) await sleep(random(0, 250));
            else if (roll < 0.45) busy(random(0, 60));
            else if (roll < 0.85) {
              // Often right after CPU work, during which a renewal fell due: it is sent after
              // the extend, with the TTL the extend is about to replace.
              if (Math.random() < 0.6) busy(random(0, 150));
              summary.extends++;
              const extended = handle.extend(random(300, 2_000)).catch((error) => error);
              if (Math.random() < 0.5) await extended;
              else pending.push(extended);
            }
            if (handle.signal.aborted) break;
            // Redis first, the handle after: the handle's deadline is never later than the
            // server's expiry, so a key already gone must not still be held by the handle
            // (unless it was removed by force, which the holder learns at its next renewal).
            const value = await redis.get(key);
            summary.checks++;
            if (!value?.startsWith(`${handle.token}:`) && handle.held && !handle.signal.aborted) {
              summary.unheld.push({ fence: handle.fence });
            }
            try {
              await fencing.transaction(pool, handle, (client) =>
                client.query(`INSERT INTO ${table} (holder, fence, seq) VALUES ($1, $2, $3)`, [
                  process.pid,
                  handle.fence,
                  seq,
                ]),
              );
              summary.writes++;
            } catch (error) {
              if (!(error instanceof StaleFenceError)) throw error;
              // A newer holder has written: by now the lease must have been lost (the handle
              // says so) unless it was taken away by a force-release, which nobody announces.
              summary.stale.push({
                fence: handle.fence,
                saidHeld: handle.held && !handle.signal.aborted,
              });
              break;
            }
          }
          const results = await Promise.all(pending);
          if (handle.signal.aborted || results.some((r) => r instanceof LockLostError)) {
            summary.lost++;
          }
        },
        { ttlMs: random(300, 900), waitTimeoutMs: 2_000, operation: 'torture' },
      );
    } catch (error) {
      if (error instanceof LockNotAcquiredError) summary.timeouts++;
      else if (!(error instanceof LockLostError)) throw error;
    }
    await sleep(random(0, 20));
  }
  return summary;
}

async function forcer(deadline) {
  const summary = { forced: [], changedHands: 0, free: 0 };
  while (Date.now() < deadline) {
    await sleep(random(300, 900));
    const status = await locks.status(key);
    if (!status.locked) {
      summary.free++;
      continue;
    }
    try {
      const result = await locks.forceRelease(key, { fence: status.fence, by: 'torture' });
      if (result.released) summary.forced.push(status.fence);
      else summary.free++;
    } catch (error) {
      if (!(error instanceof LockHolderChangedError)) throw error;
      summary.changedHands++;
    }
  }
  return summary;
}

async function main() {
  await redis.ping().catch(async () => {
    await new Promise((resolve) => redis.once('ready', resolve));
  });
  await pool.query('SELECT 1');
  const deadline = Date.now() + durationMs;
  const summary = role === 'forcer' ? await forcer(deadline) : await holder(deadline);
  process.stdout.write(`${JSON.stringify({ summary: { role, pid: process.pid, ...summary } })}\n`);
  await locks.onApplicationShutdown();
  await redis.quit().catch(() => redis.disconnect());
  await pool.end();
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`torture worker failed: ${error.stack ?? String(error)}\n`);
    process.exit(1);
  },
);
