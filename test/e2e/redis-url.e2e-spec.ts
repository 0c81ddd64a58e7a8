import Redis from 'ioredis';
import { testEnv } from '../support/env';
import { createFreshDatabase, FreshDatabase } from '../support/fresh-database';
import { freePort } from '../support/ports';
import { PrivateRedis } from '../support/redis-server';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

const PASSWORD = 'stall-test-password';

/** The service started as operators configure it: REDIS_URL in its common forms. */
describe('REDIS_URL forms at start-up (service processes, private redis-server)', () => {
  let redis: PrivateRedis;
  let admin: Redis;
  let database: FreshDatabase;
  const running: ServiceProcess[] = [];

  const start = async (env: Record<string, string>) => {
    const port = await freePort();
    const service = ServiceProcess.start(
      'main.js',
      testEnv({ PORT: String(port), DATABASE_URL: database.url, ...env }),
    );
    running.push(service);
    return { service, base: `http://127.0.0.1:${port}/api/v1/vector` };
  };
  const ready = (base: string) =>
    waitFor(async () => (await fetch(`${base}/health/ready`)).ok, {
      what: 'the service to be ready',
      timeoutMs: 20_000,
    });
  /** Keys in one database of the private server. */
  const keysIn = async (db: number) => {
    await admin.select(db);
    return admin.keys('*');
  };

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    database = await createFreshDatabase();
    admin = new Redis(redis.url);
    await admin.config('SET', 'requirepass', PASSWORD);
    await admin.auth(PASSWORD);
  });

  afterAll(async () => {
    running.forEach((service) => service.kill());
    await Promise.all(running.map((service) => service.exited));
    admin?.disconnect();
    await redis?.kill();
    await database?.drop();
  });

  it('refuses a database path that is not a number, in one line, before connecting', async () => {
    const { service } = await start({ REDIS_URL: `redis://127.0.0.1:${redis.port}/abc` });
    const { code, stderr } = await Promise.race([
      service.exited,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('still running after 10 s')), 10_000).unref(),
      ),
    ]);
    expect(code).toBe(1);
    expect(stderr.trim()).toBe(
      'Invalid configuration: REDIS_URL must have no path or a database number 0-15 as its path (/0)',
    );
  });

  it('starts with a URL without a database path (database 0), and with REDIS_DB and REDIS_PASSWORD overriding the URL', async () => {
    const [plain, overridden] = await Promise.all([
      start({
        REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${redis.port}`,
      }),
      start({
        REDIS_URL: `redis://:wrong-password@127.0.0.1:${redis.port}/5`,
        REDIS_PASSWORD: PASSWORD,
        REDIS_DB: '3',
      }),
    ]);
    await Promise.all([ready(plain.base), ready(overridden.base)]);

    // Idempotent requests use every connection the service opens (commands and subscribers).
    for (const { base } of [plain, overridden]) {
      const res = await fetch(`${base}/rebuild-index`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'url-forms' },
        body: JSON.stringify({ namespace: 'default' }),
      });
      expect([200, 404]).toContain(res.status);
    }
    // Each service wrote where its configuration says (lock fences, idempotency records).
    expect((await keysIn(0)).length).toBeGreaterThan(0);
    expect((await keysIn(3)).length).toBeGreaterThan(0);
    expect(await keysIn(5)).toEqual([]);
    for (const { service } of [plain, overridden]) expect(service.child.exitCode).toBeNull();
  });
});
