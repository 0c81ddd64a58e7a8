import { randomBytes } from 'node:crypto';
import { TestApp, startTestApp } from '../support/app';

describe('Rate limits per API key on write and admin routes, shared across replicas', () => {
  const run = randomBytes(4).toString('hex');
  const writer = `writer-secret-${run}-a`;
  const other = `writer-secret-${run}-b`;
  const admin = `admin-secret-${run}-c`;
  let replicas: TestApp[];

  beforeAll(async () => {
    const env = {
      API_KEYS: `w1-${run}:write:${writer},w2-${run}:write:${other},a-${run}:admin:${admin}`,
      RATE_LIMIT_WRITE_PER_MINUTE: '4',
      RATE_LIMIT_ADMIN_PER_MINUTE: '2',
    };
    // Two app instances on the same Redis stand in for two replicas.
    replicas = [await startTestApp(env), await startTestApp(env)];
  });

  afterAll(async () => {
    await Promise.all(replicas.map((replica) => replica.close()));
  });

  const write = (replica: TestApp, secret: string) =>
    replica.http
      .post('/api/v1/vector/batch-upsert')
      .set('authorization', `Bearer ${secret}`)
      .send({}); // 400 after the guards: counts without writing anything

  it('answers 429 with Retry-After past the limit, counting across replicas', async () => {
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await write(replicas[i % 2], writer)).status);
    expect(statuses).toEqual([400, 400, 400, 400]);
    const limited = await write(replicas[0], writer);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    expect(limited.headers['content-type']).toContain('application/problem+json');
    expect((await write(replicas[1], writer)).status).toBe(429);

    // Another key has its own budget; reads are not limited.
    expect((await write(replicas[1], other)).status).toBe(400);
    for (let i = 0; i < 6; i++) {
      const read = await replicas[0].http
        .get('/api/v1/vector/statistics')
        .set('authorization', `Bearer ${writer}`);
      expect(read.status).toBe(200);
    }
  });

  it('limits admin routes with their own, lower budget', async () => {
    const cleanup = () =>
      replicas[0].http
        .post('/api/v1/vector/cleanup-slots')
        .set('authorization', `Bearer ${admin}`)
        .send({ namespace: `none-${run}` });
    expect((await cleanup()).status).toBe(404);
    expect((await cleanup()).status).toBe(404);
    expect((await cleanup()).status).toBe(429);
  });
});
