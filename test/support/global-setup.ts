import { Client } from 'pg';
import Redis from 'ioredis';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from './env';

/** Fails fast, with a hint, when the shared services are not there. */
export default async function globalSetup(): Promise<void> {
  const hint = 'run `bash scripts/services.sh` first';
  const pg = new Client({ connectionString: TEST_DATABASE_URL, connectionTimeoutMillis: 5_000 });
  try {
    await pg.connect();
    await pg.query('SELECT 1');
  } catch (error) {
    throw new Error(`Postgres at TEST_DATABASE_URL is unreachable (${String(error)}): ${hint}`);
  } finally {
    await pg.end().catch(() => undefined);
  }
  const redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, retryStrategy: () => null });
  try {
    await redis.connect();
    await redis.ping();
  } catch (error) {
    throw new Error(`Redis at TEST_REDIS_URL is unreachable (${String(error)}): ${hint}`);
  } finally {
    redis.disconnect();
  }
}
