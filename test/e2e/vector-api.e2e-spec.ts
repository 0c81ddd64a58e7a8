import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { TestApp, startTestApp } from '../support/app';

describe('Vector API: the seed examples and client embeddings', () => {
  let app: TestApp;
  const namespace = `math-${randomBytes(3).toString('hex')}`;

  beforeAll(async () => {
    app = await startTestApp();
  });

  afterAll(async () => {
    await app.close();
  });

  it('batch-upsert answers in the seed shape and creates the namespace at slot 1', async () => {
    const response = await app.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        items: [
          { obj_ref: 'q1', content: 'What is 2+2?', id: '1' },
          { obj_ref: 'q2', content: 'What is 3*4?', id: '2' },
        ],
        table_name: 'questions',
        namespace,
      })
      .expect(200);
    expect(response.body).toMatchObject({
      success: true,
      processed: 2,
      namespace,
      slot: 1,
      errors: [],
    });
  });

  it('rebuild-index answers in the seed shape', async () => {
    await app.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        items: [{ obj_ref: 'p1', content: 'addition pattern' }],
        table_name: 'patterns',
        namespace,
      })
      .expect(200);
    const response = await app.http
      .post('/api/v1/vector/rebuild-index')
      .send({ namespace, force: false })
      .expect(200);
    expect(response.body).toMatchObject({
      success: true,
      namespace,
      questions_updated: 2,
      patterns_updated: 1,
      total_processed: 3,
      slot: 2,
      previous_slot: 1,
    });
    const search = await app.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, query: 'What is 2+2?', k: 1 })
      .expect(200);
    expect(search.body).toMatchObject({
      success: true,
      namespace,
      slot: 2,
      results: [{ obj_ref: 'q1', id: '1' }],
    });
  });

  it('stores client embeddings exactly (binary vector arrays) and finds them by vector', async () => {
    const ownNamespace = `own-${randomBytes(3).toString('hex')}`;
    // Values exact in float4, so what was sent must come back unchanged.
    const embeddings = [0, 1, 2].map((item) =>
      Array.from({ length: 384 }, (_, i) => ((i * 7 + item * 13) % 17) / 8 - 1),
    );
    await app.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        items: embeddings.map((embedding, i) => ({
          obj_ref: `own-${i}`,
          content: `own ${i}`,
          embedding,
        })),
        table_name: 'questions',
        namespace: ownNamespace,
      })
      .expect(200);
    const { rows } = await app.app.get<Pool>(PG_POOL).query<{ obj_ref: string; embedding: string }>(
      `SELECT i.obj_ref, i.embedding::text AS embedding
       FROM vec_questions i JOIN vector_slots s ON s.id = i.slot_id
       WHERE s.namespace = $1 ORDER BY i.obj_ref`,
      [ownNamespace],
    );
    expect(rows.map((row) => JSON.parse(row.embedding) as number[])).toEqual(embeddings);
    const search = await app.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace: ownNamespace, vector: embeddings[1], k: 3 })
      .expect(200);
    expect(search.body.results[0]).toMatchObject({ obj_ref: 'own-1' });
    expect(search.body.results[0].score).toBeCloseTo(1, 5);
  });
});
