/* An IdempotencyService in its own OS process (compiled code from dist/, run `npm run build`),
 * driven by JSON commands on stdin, one a line; it answers with JSON events on stdout, one a line,
 * each {event, pid, at (epoch ms), ...}. Library log lines also go to stdout; events are the lines
 * starting with '{'.
 *   node idem-worker.js <redisUrl> <connectionName> <warmupKey>
 * The Redis client (and so its pub/sub duplicate) is named <connectionName>, and reconnects only
 * 30 s after losing a connection: a subscriber killed by the test stays away. Before {event:'ready'}
 * one singleflight call on <warmupKey> has set up the completion subscription.
 * Commands:
 *   {cmd:'call', id, key, calls, workMs, ttl, pollMs, waitTimeoutMs?, trace?}  `calls` concurrent
 *     singleflight calls on `key` (in_progress_ttl `ttl` s, poll_interval_ms `pollMs`). The worker
 *     INCRs `<key>:runs`, says {event:'working', id, execution}, sleeps `workMs`, then says
 *     {event:'returning', id, result} and returns result = {nonce, pid, execution}. Every call says
 *     {event:'outcome', id, calledAt, outcome}; then {event:'done', id, count, metrics}, metrics
 *     being this process's singleflight event counts (miss, wait, hit, takeover, ...).
 *     With `trace`, store operations are reported too: {event:'begin', key, leader, status},
 *     {event:'heartbeat', key, alive}, {event:'complete', key, stored}.
 *   {cmd:'exit'}  closes the service and the client, says {event:'bye'} and exits 0. */
const { createInterface } = require('node:readline');
const { randomUUID } = require('node:crypto');
const { setTimeout: sleep } = require('node:timers/promises');
const Redis = require('ioredis');
const { RedisIdempotencyStore } = require('../../dist/idempotency/redis-idempotency.store');
const { IdempotencyService } = require('../../dist/idempotency/idempotency.service');
const { IdempotencyMetrics } = require('../../dist/idempotency/idempotency.metrics');

const [redisUrl, connectionName, warmupKey] = process.argv.slice(2);
const SCOPE = 'process-test';
const say = (event) =>
  process.stdout.write(`${JSON.stringify({ ...event, pid: process.pid, at: Date.now() })}\n`);

/** Keys whose store operations are reported (the `trace` of a call). */
const traced = new Set();

/** The real Redis store, reporting what it does on traced keys. */
class TracedStore extends RedisIdempotencyStore {
  async begin(key, record, leaseMs, force) {
    const begun = await super.begin(key, record, leaseMs, force);
    if (traced.has(key)) {
      say({ event: 'begin', key, leader: begun.leader, status: begun.record?.status });
    }
    return begun;
  }

  async heartbeat(key, owner, leaseMs) {
    const alive = await super.heartbeat(key, owner, leaseMs);
    if (traced.has(key)) say({ event: 'heartbeat', key, alive });
    return alive;
  }

  async complete(key, owner, record, ttlMs) {
    const stored = await super.complete(key, owner, record, ttlMs);
    if (traced.has(key)) say({ event: 'complete', key, stored });
    return stored;
  }
}

const redis = new Redis(redisUrl, {
  maxRetriesPerRequest: 1,
  connectionName,
  retryStrategy: () => 30_000,
});
const metrics = new IdempotencyMetrics();
const idem = new IdempotencyService(
  new TracedStore(redis, 'idem:__settled'),
  { backend: 'redis', redis },
  metrics,
);

/** Singleflight event counts of the test calls (the warmup call has its own scope). */
async function eventCounts() {
  const counts = {};
  for (const { labels, value } of (await metrics.events.get()).values) {
    if (labels.scope === SCOPE) counts[labels.event] = (counts[labels.event] ?? 0) + value;
  }
  return counts;
}

async function call({ id, key, calls, workMs, ttl, pollMs, waitTimeoutMs = 20_000, trace }) {
  if (trace) traced.add(key);
  const config = {
    scope: SCOPE,
    ttl_seconds: 60,
    in_progress_ttl: ttl,
    wait_timeout_ms: waitTimeoutMs,
    poll_interval_ms: pollMs,
  };
  const worker = async ({ signal }) => {
    const execution = await redis.incr(`${key}:runs`);
    say({ event: 'working', id, execution });
    await sleep(workMs);
    const result = { nonce: randomUUID(), pid: process.pid, execution };
    say({ event: 'returning', id, result, aborted: signal.aborted });
    return result;
  };
  const outcomes = await Promise.all(
    Array.from({ length: calls }, async () => {
      const calledAt = Date.now();
      const outcome = await idem.singleflight(key, worker, config);
      say({ event: 'outcome', id, calledAt, outcome });
    }),
  );
  say({ event: 'done', id, count: outcomes.length, metrics: await eventCounts() });
}

async function exit() {
  // A killed subscriber may be waiting to reconnect: do not let closing hang on it.
  await Promise.race([
    idem.onApplicationShutdown().then(() => redis.quit()),
    sleep(1_000, undefined, { ref: false }),
  ]).catch(() => undefined);
  redis.disconnect();
  say({ event: 'bye' });
  process.exit(0);
}

async function main() {
  await idem.singleflight(warmupKey, () => Promise.resolve(true), {
    scope: 'process-test-warmup',
    ttl_seconds: 60,
  });
  say({ event: 'ready' });
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === 'call') {
      call(command).catch((error) =>
        say({ event: 'error', id: command.id, message: String(error) }),
      );
    } else if (command.cmd === 'exit') {
      await exit();
    } else {
      say({ event: 'error', message: `unknown command ${line}` });
    }
  }
  await exit();
}

main().catch((error) => {
  say({ event: 'error', message: String(error?.stack ?? error) });
  process.exit(1);
});
