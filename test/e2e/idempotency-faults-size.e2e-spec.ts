import { randomBytes } from 'node:crypto';
import { Injectable, Logger, Module, Type } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import Redis from 'ioredis';
import { validateEnv } from '../../src/config/env.schema';
import {
  IdempotencyModule,
  IdempotencyModuleOptions,
  Idempotent,
  SingleflightOutcome,
} from '../../src/idempotency';
import { TEST_REDIS_URL, testEnv } from '../support/env';

/**
 * The cap on stored results (IdempotencyModule `maxResultBytes`, IDEMPOTENCY_MAX_RESULT_BYTES):
 * an @Idempotent method whose result is larger is answered to its caller but not stored; the key
 * is released, so the next caller runs again. On the shared test Redis.
 */

const MAX_RESULT_BYTES = 1_024;
const run = randomBytes(4).toString('hex');
const prefix = `idem:test:size:${run}`;

@Injectable()
class Reporter {
  runs = 0;

  @Idempotent({ key: (name: string) => `${prefix}:${name}`, scope: 'report', ttlSeconds: 60 })
  async report(_name: string, bytes: number): Promise<unknown> {
    this.runs++;
    await new Promise((resolve) => setImmediate(resolve));
    return { run: this.runs, blob: 'x'.repeat(bytes) };
  }
}

type Report = SingleflightOutcome<{ run: number; blob: string }>;

describe('idempotency result size cap', () => {
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });

  const compile = async (options: Partial<IdempotencyModuleOptions>, ...providers: Type[]) => {
    @Module({
      imports: [IdempotencyModule.forRoot({ backend: 'redis', redis, ...options })],
      providers,
    })
    class TestModule {}
    const moduleRef = await Test.createTestingModule({ imports: [TestModule] }).compile();
    return moduleRef.init();
  };

  afterEach(() => jest.restoreAllMocks());

  afterAll(async () => {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
  });

  it('answers a result over the cap, stores nothing, warns, and lets the next caller run', async () => {
    const warnings = jest.spyOn(Logger.prototype, 'warn');
    const app = await compile({ maxResultBytes: MAX_RESULT_BYTES }, Reporter);
    try {
      const reporter = app.get(Reporter);
      const call = (name: string, bytes: number) => reporter.report(name, bytes) as Promise<Report>;

      const big = await call('big', 4 * MAX_RESULT_BYTES);
      expect(big).toMatchObject({ status: 'done', replayed: false, result: { run: 1 } });
      expect(big.status === 'done' && big.result.blob).toHaveLength(4 * MAX_RESULT_BYTES);
      expect(await redis.get(`${prefix}:big`)).toBeNull();
      expect(
        warnings.mock.calls.some(([message]) =>
          new RegExp(`${prefix}:big.*not stored.*${MAX_RESULT_BYTES}`).test(String(message)),
        ),
      ).toBe(true);
      // Released, not replayed: the next call runs again.
      expect(await call('big', 4 * MAX_RESULT_BYTES)).toMatchObject({
        status: 'done',
        replayed: false,
        result: { run: 2 },
      });

      // Under the cap: stored and replayed as before.
      const small = await call('small', 100);
      expect(await call('small', 100)).toEqual({
        status: 'done',
        replayed: true,
        result: small.status === 'done' ? small.result : undefined,
      });
      expect(reporter.runs).toBe(3);
    } finally {
      await app.close();
    }
  });

  it('refuses a cap that is not a positive integer, in the module and in the environment', async () => {
    for (const maxResultBytes of [0, -1, 1.5, Number.NaN]) {
      await expect(compile({ maxResultBytes })).rejects.toThrow(/maxResultBytes/);
    }
    expect(validateEnv(testEnv()).IDEMPOTENCY_MAX_RESULT_BYTES).toBe(1_048_576);
    expect(
      validateEnv(testEnv({ IDEMPOTENCY_MAX_RESULT_BYTES: '65536' })).IDEMPOTENCY_MAX_RESULT_BYTES,
    ).toBe(65_536);
    for (const value of ['0', '-5', 'lots', '1.5']) {
      expect(() => validateEnv(testEnv({ IDEMPOTENCY_MAX_RESULT_BYTES: value }))).toThrow(
        /IDEMPOTENCY_MAX_RESULT_BYTES/,
      );
    }
  });
});
