import { randomBytes } from 'node:crypto';
import { EmbeddingError } from '../../src/embedding/embedding.types';
import { OpenAiEmbeddingProvider } from '../../src/embedding/openai.provider';
import { TestApp, startTestApp } from '../support/app';
import { FakeEmbeddingsServer, vectorFor } from '../support/fake-embeddings-server';

describe('OpenAI-compatible embedding provider against a local /v1/embeddings server', () => {
  let fake: FakeEmbeddingsServer;
  const provider = (
    overrides: Partial<ConstructorParameters<typeof OpenAiEmbeddingProvider>[0]> = {},
  ) =>
    new OpenAiEmbeddingProvider({
      url: fake.url,
      model: 'fake-model',
      dimension: 4,
      apiKey: 'sk-test',
      batchSize: 2,
      timeoutMs: 500,
      maxRetries: 2,
      ...overrides,
    });

  beforeEach(async () => {
    fake = await FakeEmbeddingsServer.start(4);
  });

  afterEach(async () => {
    await fake.close();
  });

  it('batches inputs, sends the key and model, keeps the order', async () => {
    fake.answer({ kind: 'ok' }, { kind: 'shuffle' });
    const vectors = await provider().embed(['a', 'bb', 'ccc']);
    expect(vectors).toEqual([vectorFor('a', 4), vectorFor('bb', 4), vectorFor('ccc', 4)]);
    expect(fake.requests.map((r) => r.input)).toEqual([['a', 'bb'], ['ccc']]);
    expect(
      fake.requests.every((r) => r.authorization === 'Bearer sk-test' && r.model === 'fake-model'),
    ).toBe(true);
  });

  it('retries 429 (honouring Retry-After) and 5xx, then succeeds', async () => {
    fake.answer(
      { kind: 'status', status: 429, retryAfter: '0.05' },
      { kind: 'status', status: 503 },
    );
    expect(await provider().embed(['x'])).toEqual([vectorFor('x', 4)]);
    expect(fake.requests).toHaveLength(3);
  });

  it('gives up after its retries, does not retry a 400, and refuses malformed answers', async () => {
    fake.answer(...Array.from({ length: 3 }, () => ({ kind: 'status' as const, status: 500 })));
    await expect(provider().embed(['x'])).rejects.toThrow(EmbeddingError);
    expect(fake.requests).toHaveLength(3);

    fake.answer({ kind: 'status', status: 400 });
    await expect(provider().embed(['x'])).rejects.toThrow('refused: HTTP 400');
    expect(fake.requests).toHaveLength(4);

    fake.answer({ kind: 'dimension', dimension: 3 });
    await expect(provider().embed(['x'])).rejects.toThrow('not 4 finite numbers');
    fake.answer({ kind: 'count', count: 1 });
    await expect(provider().embed(['x', 'y'])).rejects.toThrow('expected 2');
  });

  it('times out a hanging server and retries', async () => {
    fake.answer({ kind: 'hang' });
    expect(await provider({ timeoutMs: 200 }).embed(['x'])).toEqual([vectorFor('x', 4)]);
    expect(fake.requests).toHaveLength(2);
  });
});

describe('the service with the OpenAI-compatible provider', () => {
  let fake: FakeEmbeddingsServer;
  let app: TestApp;

  beforeAll(async () => {
    fake = await FakeEmbeddingsServer.start(8);
    app = await startTestApp({
      EMBEDDING_PROVIDER: 'openai',
      EMBEDDING_API_URL: fake.url,
      EMBEDDING_MODEL: 'fake-model',
      EMBEDDING_DIMENSION: '8',
      EMBEDDING_MAX_RETRIES: '1',
    });
  });

  afterAll(async () => {
    await app.close();
    await fake.close();
  });

  it('embeds new and changed content only, and answers 503 with nothing written when the provider fails', async () => {
    const namespace = `openai-${randomBytes(3).toString('hex')}`;
    const upsert = (items: object[]) =>
      app.http
        .post('/api/v1/vector/batch-upsert')
        .send({ items, table_name: 'questions', namespace });
    const first = await upsert([
      { obj_ref: 'a', content: 'alpha' },
      { obj_ref: 'b', content: 'beta' },
    ]).expect(200);
    expect(first.body).toMatchObject({ processed: 2, embedded: 2, reused: 0 });
    const calls = fake.requests.length;
    const same = await upsert([
      { obj_ref: 'a', content: 'alpha' },
      { obj_ref: 'b', content: 'beta!' },
    ]).expect(200);
    expect(same.body).toMatchObject({ embedded: 1, reused: 1 });
    expect(fake.requests.slice(calls).flatMap((r) => r.input)).toEqual(['beta!']);

    fake.answer({ kind: 'status', status: 500 }, { kind: 'status', status: 500 });
    const failed = await upsert([{ obj_ref: 'c', content: 'gamma' }]);
    expect(failed.status).toBe(503);
    expect(failed.headers['content-type']).toContain('application/problem+json');
    const stats = await app.http
      .get(`/api/v1/vector/statistics?namespace=${namespace}`)
      .expect(200);
    expect(stats.body.namespaces[0]).toMatchObject({ model: 'fake-model', dimension: 8 });
    expect(stats.body.namespaces[0].tables.questions.slots[0].rows).toBe(2);
  });
});
