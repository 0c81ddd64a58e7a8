import { randomUUID } from 'node:crypto';
import { TestApp, startTestApp } from '../support/app';
import { IdempotencyProbeModule, IdempotencyProbeState } from '../support/idempotency-probe.module';
import { waitFor } from '../support/wait';

describe('HTTP Idempotency-Key', () => {
  let app: TestApp;
  let state: IdempotencyProbeState;
  const url = '/api/v1/vector/test-idempotency';

  beforeAll(async () => {
    app = await startTestApp({}, [IdempotencyProbeModule]);
    state = app.app.get(IdempotencyProbeState);
  });

  afterAll(async () => {
    await app.close();
  });

  const post = (key: string | undefined, body: object, credential = 'client-a') => {
    const request = app.http.post(url).set('Authorization', `Bearer ${credential}`).send(body);
    return key === undefined ? request : request.set('Idempotency-Key', key);
  };

  it('replays the stored status and body for the same key and payload', async () => {
    const key = randomUUID();
    const first = await post(key, { text: 'hello' }).expect(200);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const runs = state.runs;
    const again = await post(key, { text: 'hello' }).expect(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toEqual(first.body);
    expect(state.runs).toBe(runs);
    // Key order does not change the payload fingerprint.
    await post(key, { text: 'hello' }).expect(200);
  });

  it('runs every request without a key', async () => {
    const a = await post(undefined, { text: 'x' }).expect(200);
    const b = await post(undefined, { text: 'x' }).expect(200);
    expect(a.body.nonce).not.toBe(b.body.nonce);
  });

  it('answers 422 when a key is reused with a different payload', async () => {
    const key = randomUUID();
    await post(key, { text: 'one' }).expect(200);
    const response = await post(key, { text: 'two' }).expect(422);
    expect(response.headers['content-type']).toContain('application/problem+json');
    expect(response.body.detail).toMatch(/different request payload/);
  });

  it('answers 409 with Retry-After while the first request is still in flight', async () => {
    const key = randomUUID();
    const first = post(key, { text: 'slow', mode: 'hold' }).then((r) => r);
    await waitFor(() => state.held);
    const conflict = await post(key, { text: 'slow', mode: 'hold' }).expect(409);
    expect(conflict.headers['retry-after']).toBe('1');
    expect(conflict.headers['content-type']).toContain('application/problem+json');
    state.release();
    expect((await first).status).toBe(200);
    const replay = await post(key, { text: 'slow', mode: 'hold' }).expect(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
  });

  it('answers 400 to a malformed or over-long key', async () => {
    for (const key of ['x'.repeat(256), 'has space', 'quote"inside', 'tab\tkey']) {
      const response = await post(key, { text: 'k' });
      expect(response.status).toBe(400);
      expect(response.body.detail).toMatch(/Idempotency-Key/);
    }
    const runs = state.runs;
    await post(`"${randomUUID()}"`, { text: 'k' }).expect(200);
    expect(state.runs).toBe(runs + 1);
  });

  it('stores 4xx responses but not 5xx ones', async () => {
    const rejected = randomUUID();
    const runsBefore = state.runs;
    await post(rejected, { text: 'r', mode: 'reject' }).expect(400);
    const replayed = await post(rejected, { text: 'r', mode: 'reject' }).expect(400);
    expect(replayed.headers['idempotent-replayed']).toBe('true');
    expect(replayed.headers['content-type']).toContain('application/problem+json');
    expect(state.runs).toBe(runsBefore + 1);

    const failed = randomUUID();
    await post(failed, { text: 'f', mode: 'fail' }).expect(500);
    const retried = await post(failed, { text: 'f', mode: 'fail' }).expect(500);
    expect(retried.headers['idempotent-replayed']).toBeUndefined();
    expect(state.runs).toBe(runsBefore + 3);
  });

  it('scopes keys by credential: one client never sees another client response', async () => {
    const key = randomUUID();
    const mine = await post(key, { text: 'same' }, 'client-a').expect(200);
    const theirs = await post(key, { text: 'same' }, 'client-b').expect(200);
    expect(theirs.headers['idempotent-replayed']).toBeUndefined();
    expect(theirs.body.nonce).not.toBe(mine.body.nonce);
    // And a different payload from another client is not a 422 either.
    await post(key, { text: 'other' }, 'client-c').expect(200);
  });
});
