import { startTestApp, TestApp } from '../support/app';
import { PrivateRedis } from '../support/redis-server';
import { waitFor } from '../support/wait';

describe('health while Redis is unreachable (private redis-server)', () => {
  let redis: PrivateRedis;
  let t: TestApp;

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    t = await startTestApp({ REDIS_URL: redis.url, HEALTH_CHECK_TIMEOUT_MS: '500' });
    await t.http.get('/api/v1/vector/health').expect(200);
  });
  afterAll(async () => {
    await t?.close();
    await redis?.kill();
  });

  it('health and readiness answer 503 with details; liveness stays 200; all recover', async () => {
    await redis.kill();

    const health = await waitFor(
      async () => {
        const res = await t.http.get('/api/v1/vector/health');
        return res.status === 503 ? res : undefined;
      },
      { what: 'health to report 503' },
    );
    // Terminus' report is kept as it is (not rewritten as a problem) so probes see every check.
    expect(health.headers['content-type']).toMatch(/^application\/json/);
    expect(health.body.status).toBe('error');
    expect(health.body.details.redis.status).toBe('down');
    expect(health.body.details.redis.message).toEqual(expect.any(String));
    expect(health.body.details.postgres.status).toBe('up');
    expect(health.body.details.pgvector.status).toBe('up');

    const started = Date.now();
    await t.http.get('/api/v1/vector/health/ready').expect(503);
    expect(Date.now() - started).toBeLessThan(2_000); // fails fast, never hangs on Redis
    await t.http.get('/api/v1/vector/health/live').expect(200);

    await redis.start();
    await waitFor(async () => (await t.http.get('/api/v1/vector/health')).status === 200, {
      what: 'health to recover after Redis restarts',
      timeoutMs: 15_000,
    });
    await t.http.get('/api/v1/vector/health/ready').expect(200);
  });
});
