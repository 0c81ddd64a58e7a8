import { randomBytes } from 'node:crypto';
import { LockService } from '../../src/lock';
import { TestApp, startTestApp } from '../support/app';

interface OpenApiOperation {
  parameters?: { name: string; in: string; required?: boolean; schema?: { type?: string } }[];
  responses: Record<string, unknown>;
}

/**
 * DELETE /lock/{key}?fencing_token=N: an operator removes the holder they saw in lock-status,
 * and nobody else, however often the request is repeated or how late it arrives.
 */
describe('force-release over HTTP, aimed at one holder', () => {
  let app: TestApp;
  let locks: LockService;
  const key = (name: string) => `lock:http-force:${randomBytes(4).toString('hex')}:${name}`;

  beforeAll(async () => {
    app = await startTestApp();
    locks = app.app.get(LockService);
  });

  afterAll(async () => {
    await app.close();
  });

  const statusOf = async (lockKey: string) =>
    (await app.http.get(`/api/v1/vector/lock-status/${lockKey}`).expect(200)).body as {
      locked: boolean;
      fencing_token: number;
      holder: { operation: string | null } | null;
    };

  const forceRelease = (lockKey: string, fencingToken?: string | number) =>
    app.http
      .delete(`/api/v1/vector/lock/${lockKey}`)
      .query(fencingToken === undefined ? {} : { fencing_token: fencingToken });

  it('refuses a fencing_token that is not a whole number', async () => {
    const lockKey = key('invalid');
    const holder = await locks.acquire(lockKey, { ttlMs: 30_000 });
    for (const token of ['abc', '-1', '1.5', '', '1e3', '99999999999999999999']) {
      const response = await forceRelease(lockKey, token).expect(400);
      expect(response.headers['content-type']).toContain('application/problem+json');
      expect(response.body.errors).toEqual([
        expect.objectContaining({ field: 'fencing_token' }) as unknown,
      ]);
    }
    expect((await statusOf(lockKey)).locked).toBe(true);
    await holder.release();
  });

  it('answers 409 and removes nobody once the lock has changed hands since the operator looked', async () => {
    const lockKey = key('changed');
    const first = await locks.acquire(lockKey, { ttlMs: 30_000, operation: 'first' });
    const seen = await statusOf(lockKey);
    expect(seen.fencing_token).toBe(first.fence);
    // The stuck-looking holder finishes; another takes the lock before the operator acts.
    await first.release();
    const second = await locks.acquire(lockKey, { ttlMs: 30_000, operation: 'second' });

    const refused = await forceRelease(lockKey, seen.fencing_token).expect(409);
    expect(refused.headers['content-type']).toContain('application/problem+json');
    expect(refused.body).toMatchObject({
      status: 409,
      current_fencing_token: second.fence,
    });
    expect(await statusOf(lockKey)).toMatchObject({
      locked: true,
      holder: { operation: 'second' },
      fencing_token: second.fence,
    });
    expect(second.held).toBe(true);
    await second.release();
  });

  it('removes the holder it names; repeated, answers the same and leaves the next holder alone', async () => {
    const lockKey = key('repeat');
    const stuck = await locks.acquire(lockKey, { ttlMs: 30_000, operation: 'stuck' });
    const seen = await statusOf(lockKey);
    const released = await forceRelease(lockKey, seen.fencing_token).expect(200);
    expect(released.body).toMatchObject({
      released: true,
      previous_holder: { operation: 'stuck' },
      fencing_token: stuck.fence + 1,
    });
    const next = await locks.acquire(lockKey, { ttlMs: 30_000, operation: 'next' });

    // A retried request (a client that never saw the answer) is answered as the first was.
    const repeated = await forceRelease(lockKey, seen.fencing_token).expect(200);
    expect(repeated.body).toEqual(released.body);
    expect((await statusOf(lockKey)).holder?.operation).toBe('next');
    expect(next.held).toBe(true);
    await next.release();
    // Nobody holds it now: 404, whether or not a token is given.
    await forceRelease(lockKey).expect(404);
    await forceRelease(lockKey, next.fence).expect(404);
  });

  it('documents the fencing_token query and the 409 in the OpenAPI document', async () => {
    const document = (await app.http.get('/api/docs-json').expect(200)).body as {
      paths: Record<string, Record<string, OpenApiOperation>>;
    };
    const operation = document.paths['/api/v1/vector/lock/{lock_key}'].delete;
    expect(operation.parameters).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          name: 'fencing_token',
          in: 'query',
          required: false,
          schema: expect.objectContaining({ type: 'integer' }) as unknown,
        }),
      ]),
    );
    expect(Object.keys(operation.responses)).toEqual(
      expect.arrayContaining(['200', '400', '404', '409']),
    );
  });
});
