/* A lock holder in its own OS process (compiled code from dist/), driven over stdin/stdout.
 *   node lock-holder.js <redisUrl> <databaseUrl> <key> <ttlMs> <mode>
 * mode "hold": withLock (renewing), reports {event:'acquired', fence, at}, then on a "write"
 *   line attempts a fenced Postgres write and reports it, with the state of handle.signal.
 * mode "take": waits for the lock, reports {event:'acquired', at}, writes fenced at once. */
const { createInterface } = require('node:readline');
const Redis = require('ioredis');
const { Pool } = require('pg');
const { RedisLockBackend } = require('../../dist/lock/redis-lock.backend');
const { LockService } = require('../../dist/lock/lock.service');
const { LockMetrics } = require('../../dist/lock/lock.metrics');
const { PostgresFencing } = require('../../dist/lock/postgres-fencing');

const [redisUrl, databaseUrl, key, ttl, mode] = process.argv.slice(2);
const say = (event) => process.stdout.write(`${JSON.stringify({ pid: process.pid, ...event })}\n`);

async function main() {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const pool = new Pool({ connectionString: databaseUrl, max: 2 });
  const locks = new LockService(
    new RedisLockBackend(redis, 'lock:__released'),
    { backend: 'redis', redis },
    new LockMetrics(),
  );
  const fencing = new PostgresFencing();
  const write = async (handle) => {
    try {
      await fencing.transaction(pool, handle, (client) =>
        client.query('INSERT INTO lock_test_writes (lock_key, writer, fence) VALUES ($1, $2, $3)', [
          key,
          String(process.pid),
          handle.fence,
        ]),
      );
      return { ok: true };
    } catch (error) {
      return { ok: false, error: error.name };
    }
  };
  const ttlMs = Number(ttl);
  if (mode === 'take') {
    const handle = await locks.acquire(key, { ttlMs: 10_000, waitTimeoutMs: 20_000 });
    say({ event: 'acquired', fence: handle.fence, at: Date.now() });
    say({ event: 'write', ...(await write(handle)) });
    await handle.release();
  } else {
    await locks.withLock(
      key,
      async (handle) => {
        say({ event: 'acquired', fence: handle.fence, at: Date.now() });
        const lines = createInterface({ input: process.stdin });
        for await (const line of lines) {
          if (line.trim() !== 'write') continue;
          const result = await write(handle);
          say({
            event: 'write',
            ...result,
            signalAborted: handle.signal.aborted,
            reason: handle.signal.reason && handle.signal.reason.name,
          });
          break;
        }
        lines.close();
      },
      { ttlMs, waitTimeoutMs: 0 },
    );
  }
  await locks.onModuleDestroy();
  await redis.quit();
  await pool.end();
}

main().catch((error) => {
  say({ event: 'error', message: String(error) });
  process.exit(1);
});
