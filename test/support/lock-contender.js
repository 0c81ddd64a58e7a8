/* A lock contender in its own OS process (compiled code from dist/): takes one key `iterations`
 * times through withLock and records each critical section in Redis, checking from inside that
 * nobody else is in it. Prints one JSON line per event on stdout. */
const Redis = require('ioredis');
const { RedisLockBackend } = require('../../dist/lock/redis-lock.backend');
const { LockService } = require('../../dist/lock/lock.service');
const { LockMetrics } = require('../../dist/lock/lock.metrics');

const [redisUrl, key, iterations] = process.argv.slice(2);
const say = (event) => process.stdout.write(`${JSON.stringify({ pid: process.pid, ...event })}\n`);

async function main() {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const locks = new LockService(
    new RedisLockBackend(redis, 'lock:__released'),
    { backend: 'redis', redis, backoffMs: 5, maxBackoffMs: 50 },
    new LockMetrics(),
  );
  const inside = `${key}:inside`;
  const log = `${key}:log`;
  say({ event: 'ready' });
  for (let i = 0; i < Number(iterations); i++) {
    await locks.withLock(
      key,
      async (handle) => {
        const start = Date.now();
        const concurrent = await redis.incr(inside);
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 3));
        await redis.decr(inside);
        const end = Date.now();
        await redis.rpush(
          log,
          JSON.stringify({ pid: process.pid, start, end, fence: handle.fence, concurrent }),
        );
      },
      { ttlMs: 5_000, waitTimeoutMs: 60_000 },
    );
  }
  await locks.onModuleDestroy();
  await redis.quit();
  say({ event: 'done' });
}

main().catch((error) => {
  say({ event: 'error', message: String(error) });
  process.exit(1);
});
