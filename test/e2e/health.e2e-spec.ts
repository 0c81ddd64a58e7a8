import { startTestApp, TestApp } from '../support/app';

describe('health endpoints (real Redis and Postgres + pgvector)', () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(() => t?.close());

  it('GET /health reports Redis, Postgres and pgvector up, with the extension version', async () => {
    const res = await t.http.get('/api/v1/vector/health').expect(200);
    expect(res.body.status).toBe('ok');
    expect(res.body.details.redis).toMatchObject({ status: 'up' });
    expect(res.body.details.postgres).toMatchObject({ status: 'up' });
    expect(res.body.details.postgres.server_version).toMatch(/^\d+/);
    expect(res.body.details.pgvector).toMatchObject({ status: 'up' });
    expect(res.body.details.pgvector.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(res.body.details.locks).toMatchObject({ status: 'up', backend: 'redis' });
  });

  it('reports whether parallel HNSW builds are safe for the installed pgvector', async () => {
    const res = await t.http.get('/api/v1/vector/health').expect(200);
    const [major, minor, patch] = (res.body.details.pgvector.version as string)
      .split('.')
      .map(Number);
    const safe = major > 0 || minor > 8 || (minor === 8 && patch >= 2);
    expect(res.body.details.pgvector.parallel_hnsw_build).toBe(safe);
  });

  it('GET /health/live and /health/ready answer 200', async () => {
    const live = await t.http.get('/api/v1/vector/health/live').expect(200);
    expect(live.body.status).toBe('ok');
    const ready = await t.http.get('/api/v1/vector/health/ready').expect(200);
    const details = ready.body.details as Record<string, unknown>;
    expect(Object.keys(details).sort()).toEqual(['instance', 'postgres', 'redis']);
  });

  it('echoes an acceptable X-Request-Id and replaces an unacceptable one', async () => {
    const echoed = await t.http.get('/api/v1/vector/health/live').set('X-Request-Id', 'trace-42');
    expect(echoed.headers['x-request-id']).toBe('trace-42');
    const replaced = await t.http
      .get('/api/v1/vector/health/live')
      .set('X-Request-Id', 'bad id\t!');
    expect(replaced.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('answers unknown routes with a 404 problem+json', async () => {
    const res = await t.http.get('/api/v1/vector/no-such-route').expect(404);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({ type: 'about:blank', title: 'Not Found', status: 404 });
  });
});
