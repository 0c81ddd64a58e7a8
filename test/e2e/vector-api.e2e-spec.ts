import { randomBytes } from 'node:crypto';
import { TestApp, startTestApp } from '../support/app';

describe('Vector API: the seed examples', () => {
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
});
