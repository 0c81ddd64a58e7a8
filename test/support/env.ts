/** Connection settings of the shared local services (scripts/services.sh), overridable. */
export const TEST_DATABASE_URL =
  process.env.TEST_DATABASE_URL ?? 'postgres://vector:vector@127.0.0.1:5432/vector_test';
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/15';
/** Template database holding pgvector and nothing else; tests clone fresh databases from it. */
export const TEMPLATE_DATABASE = process.env.TEST_TEMPLATE_DATABASE ?? 'vector_template';

/** A complete, valid environment for the service under test. */
export function testEnv(overrides: Record<string, string> = {}): Record<string, string> {
  return {
    NODE_ENV: 'test',
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'warn',
    DATABASE_URL: TEST_DATABASE_URL,
    REDIS_URL: TEST_REDIS_URL,
    HEALTH_CHECK_TIMEOUT_MS: '1000',
    // Test files share one Redis: keep rate limits out of the way except where tested.
    RATE_LIMIT_WRITE_PER_MINUTE: '1000000',
    RATE_LIMIT_ADMIN_PER_MINUTE: '1000000',
    ...overrides,
  };
}

/** Replaces this test file's process.env (Jest gives every file its own copy). */
export function applyTestEnv(overrides: Record<string, string> = {}): void {
  for (const key of Object.keys(process.env)) {
    if (
      /^(DATABASE_|REDIS_|DEFAULT_|PORT$|HOST$|LOG_LEVEL$|BODY_LIMIT|SHUTDOWN_|MIGRATE_|RATE_LIMIT_|API_KEYS$|LOCK_|IDEMPOTENCY_|EMBEDDING_|VECTOR_|METRICS_)/.test(
        key,
      )
    ) {
      delete process.env[key];
    }
  }
  Object.assign(process.env, testEnv(overrides));
}
