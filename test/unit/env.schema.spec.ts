import { ConfigValidationError, validateEnv } from '../../src/config/env.schema';

const required = {
  DATABASE_URL: 'postgres://vector:s3cret@127.0.0.1:5432/vector',
  REDIS_URL: 'redis://127.0.0.1:6379/0',
};

function errorOf(raw: Record<string, string>): ConfigValidationError {
  try {
    validateEnv(raw);
  } catch (error) {
    if (error instanceof ConfigValidationError) return error;
    throw error;
  }
  throw new Error('expected validation to fail');
}

describe('validateEnv', () => {
  it('applies the seed defaults and coerces numbers', () => {
    const env = validateEnv({ ...required, PORT: '8080' });
    expect(env).toMatchObject({
      PORT: 8080,
      NODE_ENV: 'development',
      DEFAULT_LOCK_TTL_MS: 60_000,
      DEFAULT_WAIT_TIMEOUT_MS: 30_000,
      DEFAULT_BACKOFF_MS: 100,
      DEFAULT_IDEM_TTL_SECONDS: 3_600,
      DEFAULT_IN_PROGRESS_TTL: 300,
      DEFAULT_IDEM_WAIT_TIMEOUT_MS: 5_000,
      DEFAULT_POLL_INTERVAL_MS: 150,
      BODY_LIMIT_BYTES: 16 * 1024 * 1024,
      MIGRATE_ON_START: true,
    });
  });

  it('treats an empty variable as unset', () => {
    expect(validateEnv({ ...required, PORT: '', REDIS_DB: '' })).toMatchObject({ PORT: 3000 });
  });

  it('names a missing required variable in one line', () => {
    const error = errorOf({ REDIS_URL: required.REDIS_URL });
    expect(error.message).toBe('Invalid configuration: DATABASE_URL is required');
  });

  it.each([
    ['PORT', 'abc', 'PORT must be'],
    ['PORT', '70000', 'PORT must be at most 65535'],
    ['DEFAULT_LOCK_TTL_MS', '-5', 'DEFAULT_LOCK_TTL_MS must be'],
    ['DEFAULT_BACKOFF_MS', '1.5', 'DEFAULT_BACKOFF_MS must be an integer'],
    ['NODE_ENV', 'staging', 'NODE_ENV must be one of development, production, test'],
    ['MIGRATE_ON_START', 'maybe', 'MIGRATE_ON_START must be one of'],
    ['REDIS_URL', 'http://127.0.0.1:6379', 'REDIS_URL must be a URL with scheme redis or rediss'],
  ])('refuses %s=%s', (name, value, expected) => {
    const error = errorOf({ ...required, [name]: value });
    expect(error.message).toContain(expected);
    expect(error.message).not.toContain('\n');
  });

  it('lists every bad variable and never echoes values (they may hold secrets)', () => {
    const error = errorOf({
      DATABASE_URL: 'mysql://root:s3cret@db/x',
      REDIS_URL: required.REDIS_URL,
      PORT: '-1',
    });
    expect(error.message).toMatch(/^Invalid configuration: [^\n]*DATABASE_URL must be a URL/);
    expect(error.message).toContain('; ');
    expect(error.message).toContain('PORT must be at least 0');
    expect(error.message).not.toContain('s3cret');
  });
});
