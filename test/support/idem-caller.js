/* Single-flight callers in their own OS process (compiled code from dist/).
 *   node idem-caller.js <redisUrl> <key> <calls> <inProgressTtlSeconds> <workMs> <pollMs> <name>
 * On a "go" line on stdin it makes <calls> concurrent singleflight calls whose worker counts its
 * executions in Redis (<key>:runs) and returns a nonce; prints one JSON line per event. */
const { createInterface } = require('node:readline');
const { randomUUID } = require('node:crypto');
const Redis = require('ioredis');
const { RedisIdempotencyStore } = require('../../dist/idempotency/redis-idempotency.store');
const { IdempotencyService } = require('../../dist/idempotency/idempotency.service');
const { IdempotencyMetrics } = require('../../dist/idempotency/idempotency.metrics');

const [redisUrl, key, calls, ttl, workMs, pollMs, name] = process.argv.slice(2);
const say = (event) => process.stdout.write(`${JSON.stringify({ pid: process.pid, ...event })}\n`);

async function main() {
  // A slow reconnect: a killed subscriber stays away, so only polling can finish a wait.
  const redis = new Redis(redisUrl, {
    maxRetriesPerRequest: 1,
    connectionName: name,
    retryStrategy: () => 5_000,
  });
  const idem = new IdempotencyService(
    new RedisIdempotencyStore(redis, 'idem:__settled'),
    { backend: 'redis', redis },
    new IdempotencyMetrics(),
  );
  const config = {
    scope: 'process-test',
    ttl_seconds: 60,
    in_progress_ttl: Number(ttl),
    wait_timeout_ms: 20_000,
    poll_interval_ms: Number(pollMs),
  };
  const worker = async ({ signal }) => {
    await redis.incr(`${key}:runs`);
    say({ event: 'working' });
    await new Promise((resolve) => setTimeout(resolve, Number(workMs)));
    return { nonce: randomUUID(), pid: process.pid, aborted: signal.aborted };
  };
  // Subscribed (and the subscriber connection named) before we report ready.
  await idem.singleflight(`${key}:warmup:${process.pid}`, async () => 1, config);
  say({ event: 'ready' });
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() !== 'go') continue;
    const outcomes = await Promise.all(
      Array.from({ length: Number(calls) }, () =>
        idem.singleflight(key, worker, config).then((outcome) => {
          say({ event: 'outcome', at: Date.now(), ...outcome });
          return outcome;
        }),
      ),
    );
    say({ event: 'done', count: outcomes.length });
    break;
  }
  await idem.onModuleDestroy();
  redis.disconnect();
}

main().catch((error) => {
  say({ event: 'error', message: String(error) });
  process.exit(1);
});
