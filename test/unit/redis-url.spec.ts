import { ConfigValidationError, validateEnv } from '../../src/config/env.schema';
import { redisUrlOptions } from '../../src/redis/redis-url';

const required = { DATABASE_URL: 'postgres://vector:vector@127.0.0.1:5432/vector' };

describe('REDIS_URL', () => {
  it.each([
    'redis://cache:6379',
    'redis://cache',
    'redis://cache:6379/',
    'redis://cache:6379/0',
    'redis://cache:6379/15',
    'rediss://user:secret@cache.example.com:6380/2',
    'redis://[::1]:6379/1',
  ])('accepts %s', (url) => {
    expect(validateEnv({ ...required, REDIS_URL: url }).REDIS_URL).toBe(url);
  });

  it.each([
    ['redis://cache:6379/abc', 'must have no path or a database number 0-15 as its path (/0)'],
    ['redis://cache:6379/16', 'must have no path or a database number 0-15 as its path (/0)'],
    ['redis://cache:6379/1/2', 'must have no path or a database number 0-15 as its path (/0)'],
    ['redis://cache:6379/-1', 'must have no path or a database number 0-15 as its path (/0)'],
    ['redis://cache:6379?db=2', 'must not have a query string (set REDIS_DB for the database)'],
    ['http://cache:6379', 'must be a URL with scheme redis or rediss'],
    ['cache:6379', 'must be a URL with scheme redis or rediss'],
    ['redis://', 'must name a host'],
  ])('refuses %s in one line', (url, problem) => {
    let error: unknown;
    try {
      validateEnv({ ...required, REDIS_URL: url });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigValidationError);
    expect((error as Error).message).toBe(`Invalid configuration: REDIS_URL ${problem}`);
  });

  it('takes host, port, credentials, database and TLS from the URL', () => {
    expect(redisUrlOptions('rediss://us%40er:p%3Ass@cache.example.com:6380/7')).toEqual({
      host: 'cache.example.com',
      port: 6380,
      username: 'us@er',
      password: 'p:ss',
      db: 7,
      tls: {},
    });
    expect(redisUrlOptions('redis://[::1]')).toEqual({
      host: '::1',
      port: 6379,
      username: undefined,
      password: undefined,
      db: 0,
      tls: undefined,
    });
    expect(redisUrlOptions('redis://:secret@cache:6379/').password).toBe('secret');
  });
});

describe('REDIS_COMMAND_TIMEOUT_MS', () => {
  const env = { ...required, REDIS_URL: 'redis://cache:6379' };

  it('defaults to 1500 ms and takes a positive whole number', () => {
    expect(validateEnv(env).REDIS_COMMAND_TIMEOUT_MS).toBe(1_500);
    expect(validateEnv({ ...env, REDIS_COMMAND_TIMEOUT_MS: '250' }).REDIS_COMMAND_TIMEOUT_MS).toBe(
      250,
    );
  });

  it.each(['0', '-5', '1.5', 'soon'])('refuses %s', (value) => {
    expect(() => validateEnv({ ...env, REDIS_COMMAND_TIMEOUT_MS: value })).toThrow(
      /^Invalid configuration: REDIS_COMMAND_TIMEOUT_MS must be/,
    );
  });
});
