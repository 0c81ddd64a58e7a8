import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { Logger } from '@nestjs/common';
import Redis from 'ioredis';
import { toProblem } from '../../src/common/problem-details.filter';
import { IdempotencyLeaseLostError } from '../../src/idempotency';
import { TestApp, startTestApp } from '../support/app';
import { redisServerPid } from '../support/idem-fault-workers';
import {
  IdempotencyFaultProbeModule,
  IdempotencyFaultProbeState,
} from '../support/idempotency-fault-probe.module';
import { PrivateRedis } from '../support/redis-server';
import { waitFor } from '../support/wait';

/**
 * HTTP Idempotency-Key against the real app on a private redis-server: what is stored (only
 * outcomes a retry cannot change), what a replay carries (status, complete body, the headers that
 * matter), the size cap, and one answer per key when a request's in-progress record expired
 * while Redis was stopped (SIGSTOP) and another request with the key took over.
 */

const MAX_RESULT_BYTES = 8_192;
const base = '/api/v1/vector/test-idempotency-faults';

describe('HTTP Idempotency-Key under faults (private Redis)', () => {
  let server: PrivateRedis;
  let admin: Redis;
  let app: TestApp;
  let state: IdempotencyFaultProbeState;
  let warnings: jest.SpyInstance;

  beforeAll(async () => {
    server = await PrivateRedis.start();
    admin = new Redis(server.url, { maxRetriesPerRequest: 1 });
    app = await startTestApp(
      { REDIS_URL: server.url, IDEMPOTENCY_MAX_RESULT_BYTES: String(MAX_RESULT_BYTES) },
      [IdempotencyFaultProbeModule],
    );
    state = app.app.get(IdempotencyFaultProbeState);
  }, 30_000);

  afterAll(async () => {
    await app?.close();
    admin?.disconnect();
    await server?.kill();
  });

  beforeEach(() => {
    warnings = jest.spyOn(Logger.prototype, 'warn');
  });
  afterEach(() => {
    state.releaseAll();
    jest.restoreAllMocks();
  });

  const post = (path: string, key: string, body: object) =>
    app.http.post(`${base}/${path}`).set('Idempotency-Key', key).send(body);
  const warned = (pattern: RegExp) =>
    warnings.mock.calls.some(([message]) => pattern.test(String(message)));

  it('never stores 408, 409, 425 or 429: a retry with the key runs again', async () => {
    for (const status of [408, 409, 425, 429]) {
      const key = randomUUID();
      const body = { text: `t${status}` };
      const first = await post(`transient/${status}`, key, body);
      expect(first.status).toBe(status);
      expect(first.headers['retry-after']).toBe('7');

      const retry = await post(`transient/${status}`, key, body);
      expect({ status: retry.status, replayed: retry.headers['idempotent-replayed'] }).toEqual({
        status: 200,
        replayed: undefined,
      });
      // The outcome that a retry cannot change is the one kept.
      const again = await post(`transient/${status}`, key, body).expect(200);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(again.body).toEqual(retry.body);
    }
  });

  it('replays the original status, complete body and Location, Retry-After, Content-Type', async () => {
    const key = randomUUID();
    const first = await post('accepted', key, { text: 'job' }).expect(202);
    expect(first.headers.location).toBe(`/jobs/${first.body.run}`);
    const runs = state.runs;
    const replay = await post('accepted', key, { text: 'job' });
    expect(replay.status).toBe(202);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    for (const header of ['location', 'retry-after', 'content-type']) {
      expect([header, replay.headers[header]]).toEqual([header, first.headers[header]]);
    }
    expect(replay.text).toBe(first.text);

    // A deterministic 4xx problem, extension fields and all.
    const invalidKey = randomUUID();
    const rejected = await post('invalid', invalidKey, { text: 'odd' }).expect(422);
    expect(rejected.body).toMatchObject({ run: runs + 1, hints: [{ field: 'text' }] });
    const replayedProblem = await post('invalid', invalidKey, { text: 'odd' }).expect(422);
    expect(replayedProblem.headers['idempotent-replayed']).toBe('true');
    expect(replayedProblem.headers['content-type']).toBe(rejected.headers['content-type']);
    expect(replayedProblem.body).toEqual(rejected.body);
    expect(state.runs).toBe(runs + 1);
  });

  it('answers a response over IDEMPOTENCY_MAX_RESULT_BYTES without storing it, and warns', async () => {
    const key = randomUUID();
    const large = { text: 'big', pad: 4 * MAX_RESULT_BYTES };
    const first = await post('large', key, large).expect(200);
    expect(first.body.blob).toHaveLength(4 * MAX_RESULT_BYTES);
    expect(warned(/not stored.*\d+ bytes/)).toBe(true);

    // Not replayed: the key was released, so the retry runs again.
    const retry = await post('large', key, large).expect(200);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    expect(retry.body.run).toBe(first.body.run + 1);

    // A response under the cap is stored as usual.
    const smallKey = randomUUID();
    const small = await post('large', smallKey, { text: 'small', pad: 100 }).expect(200);
    const replay = await post('large', smallKey, { text: 'small', pad: 100 }).expect(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(small.body);
  });

  /**
   * Holds a request to `held` (lease 1 s) and stops Redis until its in-progress record has
   * expired; the request's lease guard meanwhile aborts its signal.
   */
  const holdPastLease = async (key: string, body: object) => {
    const pid = await redisServerPid(admin);
    const held = state.heldCount;
    const first = post('held', key, body).then((response) => response);
    await waitFor(() => state.heldCount === held + 1, { what: 'the first request held' });
    process.kill(pid, 'SIGSTOP');
    try {
      await delay(1_400);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // Wrapped: an async function returning the promise itself would wait for the response.
    return { first };
  };

  it('a request taken over after its lease expired answers with the stored response, not its own', async () => {
    const key = randomUUID();
    const body = { text: 'taken' };
    state.holdNext = 1;
    const { first } = await holdPastLease(key, body);

    // Another request with the key finds the record expired, runs and stores its response.
    const second = await post('held', key, body).expect(200);
    expect(second.headers['idempotent-replayed']).toBeUndefined();

    state.releaseOne();
    const answer = await first;
    expect(answer.status).toBe(200);
    expect(answer.headers['idempotent-replayed']).toBe('true');
    expect(answer.body).toEqual(second.body);
    expect(warned(/not stored/)).toBe(true);
    const metrics = await app.http.get('/metrics').expect(200);
    expect(metrics.text).toMatch(/idempotency_http_responses_total\{event="stale_completion"\} 1/);

    // Its handler was told, through its abort signal, that the lease was gone.
    const firstRun = state.signals.find((s) => s.run === answer.body.run - 1);
    expect(firstRun).toMatchObject({ present: true, aborted: true });

    const replay = await post('held', key, body).expect(200);
    expect(replay.body).toEqual(second.body);
  }, 20_000);

  it('a request taken over while the new one still runs answers 409 saying so', async () => {
    const key = randomUUID();
    const body = { text: 'contended' };
    state.holdNext = 2;
    const { first } = await holdPastLease(key, body);

    const secondHeld = state.heldCount + 1;
    const second = post('held', key, body).then((response) => response);
    await waitFor(() => state.heldCount === secondHeld, { what: 'the second request held' });

    state.releaseOne();
    const answer = await first;
    expect(answer.status).toBe(409);
    expect(answer.headers['content-type']).toContain('application/problem+json');
    expect(answer.headers['retry-after']).toBeDefined();
    expect(answer.body.detail).toMatch(/taken over/);

    state.releaseOne();
    const done = await second;
    // The service-level twin (a @Idempotent caller whose run was taken over) maps alike.
    const lost = toProblem(new IdempotencyLeaseLostError('idem:x', 'taken over'), '/x');
    expect({ status: lost.status, retryAfter: lost.retryAfter }).toEqual({
      status: 409,
      retryAfter: '1',
    });
    expect(done.status).toBe(200);
    expect(done.headers['idempotent-replayed']).toBeUndefined();
    const replay = await post('held', key, body).expect(200);
    expect(replay.body).toEqual(done.body);
  }, 20_000);
});
