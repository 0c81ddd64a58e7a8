import Redis from 'ioredis';
import { IdempotencyBackendError, IdempotencyService } from '../../src/idempotency';
import { LockBackendError, LockService } from '../../src/lock';
import { startTestApp, TestApp } from '../support/app';
import { testEnv } from '../support/env';
import { createFreshDatabase, FreshDatabase } from '../support/fresh-database';
import { freePort } from '../support/ports';
import { PrivateRedis } from '../support/redis-server';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

const COMMAND_TIMEOUT_MS = 1_000;
// The configured wait, plus about a second for everything else a request does.
const ANSWER_WITHIN_MS = COMMAND_TIMEOUT_MS + 1_000;

/** The pid of a private redis-server, to stop and continue it. */
async function pidOf(redis: PrivateRedis): Promise<number> {
  const admin = new Redis(redis.url);
  try {
    return Number(/process_id:(\d+)/.exec(await admin.info('server'))![1]);
  } finally {
    admin.disconnect();
  }
}

/**
 * A Redis that stops answering while its connections stay open (SIGSTOP: a stuck server, a
 * frozen VM) must cost each request at most the configured command timeout, not hang it.
 */
describe('the service while its Redis is stopped (SIGSTOP, connections open)', () => {
  let redis: PrivateRedis;
  let redisPid: number;
  let database: FreshDatabase;
  let service: ServiceProcess;
  let base: string;
  let stopped = false;

  const post = (path: string, body: unknown, idempotencyKey: string) =>
    fetch(`${base}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': idempotencyKey },
      body: JSON.stringify(body),
      // Without a bound a hung request would hold the test until Jest's own timeout.
      signal: AbortSignal.timeout(8_000),
    });
  const timed = async <T>(request: () => Promise<T>) => {
    const started = performance.now();
    const result = await request();
    return { result, ms: performance.now() - started };
  };
  const upsert = (namespace: string) => ({
    items: [{ obj_ref: 'q1', content: 'What is 2+2?' }],
    table_name: 'questions',
    namespace,
  });

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    database = await createFreshDatabase();
    redisPid = await pidOf(redis);
    const port = await freePort();
    base = `http://127.0.0.1:${port}/api/v1/vector`;
    service = ServiceProcess.start(
      'main.js',
      testEnv({
        PORT: String(port),
        REDIS_URL: redis.url,
        DATABASE_URL: database.url,
        REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
        HEALTH_CHECK_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
      }),
    );
    await waitFor(async () => (await fetch(`${base}/health/ready`)).ok, {
      what: 'the service to be ready',
      timeoutMs: 20_000,
    });
  }, 30_000);

  afterAll(async () => {
    if (stopped) process.kill(redisPid, 'SIGCONT');
    service?.kill();
    await service?.exited;
    await redis?.kill();
    await database?.drop();
  });

  it('answers 503 within the command timeout, stays live, is not ready, and recovers after SIGCONT', async () => {
    // Rebuilds and upserts work, and their subscribers (idempotency notices) are connected.
    expect((await post('/batch-upsert', upsert('stall'), 'before-1')).status).toBe(200);
    const rebuilds = await Promise.all([
      post('/rebuild-index', { namespace: 'stall' }, 'before-2'),
      post('/rebuild-index', { namespace: 'stall' }, 'before-3'),
    ]);
    expect(rebuilds.map((res) => res.status)).toEqual([200, 200]);

    process.kill(redisPid, 'SIGSTOP');
    stopped = true;

    const [rebuild, write, live, ready] = await Promise.all([
      timed(() => post('/rebuild-index', { namespace: 'stall', force: true }, 'during-1')),
      timed(() => post('/batch-upsert', upsert('stall'), 'during-2')),
      timed(() => fetch(`${base}/health/live`)),
      timed(() => fetch(`${base}/health/ready`)),
    ]);
    for (const { result, ms } of [rebuild, write]) {
      expect(result.status).toBe(503);
      expect(result.headers.get('content-type')).toContain('application/problem+json');
      expect(ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    expect(live.result.status).toBe(200);
    expect(live.ms).toBeLessThan(500);
    expect(ready.result.status).toBe(503);
    expect(ready.ms).toBeLessThan(ANSWER_WITHIN_MS);

    // Still stopped: every new request is bounded the same way, not only the first ones.
    const again = await timed(() => post('/batch-upsert', upsert('stall'), 'during-3'));
    expect(again.result.status).toBe(503);
    expect(again.ms).toBeLessThan(ANSWER_WITHIN_MS);

    process.kill(redisPid, 'SIGCONT');
    stopped = false;
    await waitFor(async () => (await fetch(`${base}/health/ready`)).ok, {
      what: 'readiness to recover after SIGCONT',
    });
    expect((await post('/batch-upsert', upsert('stall'), 'after-1')).status).toBe(200);
    expect((await post('/rebuild-index', { namespace: 'stall' }, 'after-2')).status).toBe(200);
    // Same key as before the stop: replayed from the store, which answers again.
    const replay = await post('/batch-upsert', upsert('stall'), 'before-1');
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(service.child.exitCode).toBeNull();
  });
});

describe('lock and idempotency calls while Redis is stopped (in-process app)', () => {
  let redis: PrivateRedis;
  let redisPid: number;
  let database: FreshDatabase;
  let app: TestApp;
  let stopped = false;

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    database = await createFreshDatabase();
    redisPid = await pidOf(redis);
    app = await startTestApp({
      REDIS_URL: redis.url,
      DATABASE_URL: database.url,
      REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
    });
  });

  afterAll(async () => {
    if (stopped) process.kill(redisPid, 'SIGCONT');
    await app?.close();
    await redis?.kill();
    await database?.drop();
  });

  it('fails each call within the bound, and a subscription begun meanwhile works once Redis answers', async () => {
    const locks = app.app.get(LockService);
    const idempotency = app.app.get(IdempotencyService);
    process.kill(redisPid, 'SIGSTOP');
    stopped = true;

    let started = performance.now();
    await expect(locks.acquire('lock:stall:one', { waitTimeoutMs: 10_000 })).rejects.toBeInstanceOf(
      LockBackendError,
    );
    expect(performance.now() - started).toBeLessThan(ANSWER_WITHIN_MS);

    // The first singleflight also opens the completion subscriber: its SUBSCRIBE cannot be
    // answered now, and must neither hang the call nor be lost.
    started = performance.now();
    await expect(
      idempotency.singleflight('idem:stall:one', () => Promise.resolve(1), { scope: 'stall' }),
    ).rejects.toBeInstanceOf(IdempotencyBackendError);
    // At most a second waiting for the subscription, then the command timeout.
    expect(performance.now() - started).toBeLessThan(ANSWER_WITHIN_MS + 1_000);

    process.kill(redisPid, 'SIGCONT');
    stopped = false;
    await waitFor(async () => (await app.http.get('/api/v1/vector/health/ready')).status === 200, {
      what: 'readiness to recover',
    });

    // The acquire and the begin that timed out still ran once Redis answered; the token and the
    // in-progress record they wrote were cleared behind them, so neither blocks its key for a
    // whole lease.
    await waitFor(async () => !(await locks.status('lock:stall:one')).locked, {
      timeoutMs: 3_000,
      what: 'the timed-out acquire to be undone',
    });

    // The subscription asked for while Redis was stopped took effect once it answered.
    const admin = new Redis(redis.url);
    try {
      await waitFor(
        async () => ((await admin.pubsub('NUMSUB', 'idem:__settled')) as [string, number])[1] === 1,
        { what: 'the completion subscriber to be subscribed' },
      );
    } finally {
      admin.disconnect();
    }
    expect(
      await idempotency.singleflight('idem:stall:two', () => Promise.resolve(42), {
        scope: 'stall',
      }),
    ).toEqual({ status: 'done', result: 42, replayed: false });

    // With the subscription up, a begin that times out reaches Redis and runs once it answers;
    // the in-progress record it writes is cleared behind it, rather than holding the key for a
    // whole lease with nobody to renew or complete it.
    process.kill(redisPid, 'SIGSTOP');
    stopped = true;
    await expect(
      idempotency.singleflight('idem:stall:three', () => Promise.resolve(3), { scope: 'stall' }),
    ).rejects.toBeInstanceOf(IdempotencyBackendError);
    process.kill(redisPid, 'SIGCONT');
    stopped = false;
    await waitFor(async () => (await idempotency.peek('idem:stall:three')) === null, {
      timeoutMs: 3_000,
      what: 'the timed-out begin to be undone',
    });
    expect(
      await idempotency.singleflight('idem:stall:three', () => Promise.resolve(3), {
        scope: 'stall',
        wait_timeout_ms: 0,
      }),
    ).toEqual({ status: 'done', result: 3, replayed: false });
  });
});
