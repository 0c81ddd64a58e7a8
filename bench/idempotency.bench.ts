/**
 * Follower wake-up latency: how long after a leader completes do its followers return, woken by
 * the completion notice vs. by polling alone. Local Redis, db 14.
 *   npm run bench:idempotency      (BENCH_ROUNDS=30 by default)
 */
import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import { IdempotencyMetrics } from '../src/idempotency/idempotency.metrics';
import { IdempotencyService } from '../src/idempotency/idempotency.service';
import { RedisIdempotencyStore } from '../src/idempotency/redis-idempotency.store';
import { median, percentile, sleep, table } from './support/stats';

const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
const FOLLOWERS = 20;

function service(redis: Redis, channel: string) {
  return new IdempotencyService(
    new RedisIdempotencyStore(redis, channel),
    { backend: 'redis', redis },
    new IdempotencyMetrics(),
  );
}

/** Latencies (ms) from the leader's completion to each follower's return. */
async function measure(notified: boolean, pollMs: number): Promise<number[]> {
  const leaderRedis = new Redis(REDIS_URL);
  const followerRedis = new Redis(REDIS_URL);
  const leader = service(leaderRedis, 'idem:__settled');
  // Followers listening on a channel nobody publishes to can only poll.
  const followers = service(followerRedis, notified ? 'idem:__settled' : 'idem:__bench_silent');
  const latencies: number[] = [];
  const config = { scope: 'bench', wait_timeout_ms: 10_000, poll_interval_ms: pollMs };
  for (let round = 0; round < ROUNDS; round++) {
    const key = `idem:bench:${randomBytes(6).toString('hex')}`;
    let completedAt = 0;
    let started!: () => void;
    const leaderStarted = new Promise<void>((resolve) => (started = resolve));
    const lead = leader.singleflight(
      key,
      async () => {
        started();
        await sleep(50 + Math.random() * pollMs);
        completedAt = performance.now();
        return { round };
      },
      config,
    );
    await leaderStarted;
    const waiting = Array.from({ length: FOLLOWERS }, () =>
      followers
        .singleflight(key, () => Promise.resolve({ round: -1 }), config)
        .then(() => latencies.push(performance.now() - completedAt)),
    );
    await Promise.all([lead, ...waiting]);
  }
  await leader.onApplicationShutdown();
  await followers.onApplicationShutdown();
  await leaderRedis.quit();
  await followerRedis.quit();
  return latencies;
}

async function main() {
  console.log(`# Follower wake-up after completion (${ROUNDS} rounds × ${FOLLOWERS} followers)\n`);
  const rows: (string | number)[][] = [];
  const results: Record<string, number[]> = {};
  for (const [name, notified, pollMs] of [
    ['notification (poll 150 ms fallback)', true, 150],
    ['polling only, 150 ms (seed default)', false, 150],
    ['polling only, 20 ms', false, 20],
  ] as const) {
    const latencies = await measure(notified, pollMs);
    results[name] = latencies;
    rows.push([name, median(latencies), percentile(latencies, 99)]);
  }
  console.log(table(['follower wake-up', 'p50 ms', 'p99 ms'], rows));
  const notified = median(results['notification (poll 150 ms fallback)']);
  const polled = median(results['polling only, 150 ms (seed default)']);
  console.log(
    `\nnotification p50 is ${(polled / notified).toFixed(1)}× faster than 150 ms polling`,
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
