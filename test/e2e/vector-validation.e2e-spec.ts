import { randomBytes } from 'node:crypto';
import { TestApp, startTestApp } from '../support/app';

const DIM = 384;
const unit = (i: number) => Array.from({ length: DIM }, (_, j) => (j === i % DIM ? 1 : 0.01));

describe('Vector API: bad input is a 4xx problem and writes nothing', () => {
  let app: TestApp;
  const namespace = `valid-${randomBytes(3).toString('hex')}`;
  const fresh = () => `fresh-${randomBytes(3).toString('hex')}`;

  beforeAll(async () => {
    app = await startTestApp();
    await app.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        items: [{ obj_ref: 'seed', content: 'seed item' }],
        table_name: 'questions',
        namespace,
      })
      .expect(200);
  });

  afterAll(async () => {
    await app.close();
  });

  const rows = async () => {
    const stats = await app.http
      .get(`/api/v1/vector/statistics?namespace=${namespace}`)
      .expect(200);
    return stats.body.namespaces[0].tables.questions.slots[0].rows as number;
  };

  const upsert = (body: unknown) =>
    app.http
      .post('/api/v1/vector/batch-upsert')
      .set('content-type', 'application/json')
      .send(body as object);

  const item = (obj_ref: string, extra: object = {}) => ({
    obj_ref,
    content: `content ${obj_ref}`,
    ...extra,
  });

  const cases: [string, (ns: string) => unknown, number, RegExp][] = [
    [
      'an unknown table',
      (ns) => ({ items: [item('a')], table_name: 'users', namespace: ns }),
      400,
      /table_name/,
    ],
    [
      'a table name with SQL in it',
      (ns) => ({ items: [item('a')], table_name: 'questions; DROP TABLE x', namespace: ns }),
      400,
      /table_name/,
    ],
    [
      'a bad namespace',
      () => ({ items: [item('a')], table_name: 'questions', namespace: 'Bad NS' }),
      400,
      /namespace/,
    ],
    [
      'a path-like namespace',
      () => ({ items: [item('a')], table_name: 'questions', namespace: '../etc' }),
      400,
      /namespace/,
    ],
    [
      'an over-long namespace',
      () => ({ items: [item('a')], table_name: 'questions', namespace: 'a'.repeat(65) }),
      400,
      /namespace/,
    ],
    [
      'a wrong dimension',
      (ns) => ({
        items: [item('a', { embedding: [1, 2, 3] })],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /384 dimensions/,
    ],
    [
      'a NaN',
      (ns) => ({
        items: [item('a', { embedding: [...unit(1).slice(1), 'NaN'] })],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /embedding/,
    ],
    [
      'an all-zero vector',
      (ns) => ({
        items: [item('a', { embedding: new Array(DIM).fill(0) })],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /all zeros/,
    ],
    [
      'an empty batch',
      (ns) => ({ items: [], table_name: 'questions', namespace: ns }),
      400,
      /items/,
    ],
    [
      'an oversized batch',
      (ns) => ({
        items: Array.from({ length: 1001 }, (_, i) => item(`i${i}`)),
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /at most 1000 items/,
    ],
    [
      'a duplicate obj_ref',
      (ns) => ({
        items: [item('a'), item('b'), item('a')],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /appears twice/,
    ],
    [
      'too long content',
      (ns) => ({
        items: [item('a', { content: 'x'.repeat(32 * 1024 + 1) })],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /at most 32768 bytes/,
    ],
    [
      'too large metadata',
      (ns) => ({
        items: [item('a', { metadata: { blob: 'x'.repeat(9000) } })],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /metadata/,
    ],
    [
      'metadata that is not an object',
      (ns) => ({
        items: [item('a', { metadata: 'text' })],
        table_name: 'questions',
        namespace: ns,
      }),
      400,
      /metadata/,
    ],
    [
      'an unknown field',
      (ns) => ({ items: [item('a', { vector: [1] })], table_name: 'questions', namespace: ns }),
      400,
      /vector/,
    ],
    [
      'an empty obj_ref',
      (ns) => ({ items: [item('')], table_name: 'questions', namespace: ns }),
      400,
      /obj_ref/,
    ],
  ];

  it.each(cases)(
    'refuses %s in a new namespace without creating it',
    async (_name, body, status, detail) => {
      const ns = fresh();
      const response = await upsert(body(ns));
      expect(response.status).toBe(status);
      expect(response.headers['content-type']).toContain('application/problem+json');
      expect(JSON.stringify(response.body)).toMatch(detail);
      await app.http.get(`/api/v1/vector/statistics?namespace=${ns}`).expect(404);
    },
  );

  it.each(cases.filter(([name]) => name !== 'an empty batch'))(
    'refuses %s mixed with valid items in an existing namespace, writing none of them',
    async (_name, body) => {
      const before = await rows();
      const request = body(namespace) as { items?: unknown[]; namespace?: string };
      if (request.namespace === namespace && Array.isArray(request.items)) {
        request.items.push(item(`valid-${randomBytes(3).toString('hex')}`));
      }
      const response = await upsert(request);
      expect(response.status).toBeGreaterThanOrEqual(400);
      expect(response.status).toBeLessThan(500);
      expect(await rows()).toBe(before);
    },
  );

  it('refuses Infinity (1e999 in JSON)', async () => {
    const before = await rows();
    const embedding = unit(2).map(String);
    embedding[5] = '1e999';
    const body = `{"items":[{"obj_ref":"inf","content":"x","embedding":[${embedding.join(',')}]}],"table_name":"questions","namespace":"${namespace}"}`;
    const response = await app.http
      .post('/api/v1/vector/batch-upsert')
      .set('content-type', 'application/json')
      .send(body);
    expect(response.status).toBe(400);
    expect(await rows()).toBe(before);
  });

  it('answers 400 to malformed JSON', async () => {
    await app.http
      .post('/api/v1/vector/batch-upsert')
      .set('content-type', 'application/json')
      .send('{"items": [')
      .expect(400);
  });

  it('validates search, statistics, rebuild and cleanup input', async () => {
    const search = (body: object) => app.http.post('/api/v1/vector/search').send(body);
    expect(
      (await search({ table_name: 'questions', namespace, query: 'x', vector: unit(1) })).status,
    ).toBe(400);
    expect((await search({ table_name: 'questions', namespace })).status).toBe(400);
    expect((await search({ table_name: 'questions', namespace, query: 'x', k: 0 })).status).toBe(
      400,
    );
    expect((await search({ table_name: 'questions', namespace, query: 'x', k: 1001 })).status).toBe(
      400,
    );
    expect((await search({ table_name: 'nope', namespace, query: 'x' })).status).toBe(400);
    expect((await search({ table_name: 'questions', namespace, vector: [1, 2] })).status).toBe(400);
    expect((await search({ table_name: 'questions', namespace: fresh(), query: 'x' })).status).toBe(
      404,
    );
    expect((await app.http.get('/api/v1/vector/statistics?table_name=nope')).status).toBe(400);
    expect((await app.http.get('/api/v1/vector/statistics?namespace=BAD')).status).toBe(400);
    expect(
      (await app.http.post('/api/v1/vector/rebuild-index').send({ namespace: fresh() })).status,
    ).toBe(404);
    expect(
      (await app.http.post('/api/v1/vector/rebuild-index').send({ namespace: 'x y' })).status,
    ).toBe(400);
    expect(
      (await app.http.post('/api/v1/vector/rebuild-index').send({ namespace, force: 'yes' }))
        .status,
    ).toBe(400);
    expect(
      (await app.http.post('/api/v1/vector/cleanup-slots').send({ namespace: fresh() })).status,
    ).toBe(404);
    expect((await app.http.get('/api/v1/vector/rebuilds/BAD%20NS')).status).toBe(400);
  });
});
