import { setTimeout as delay } from 'node:timers/promises';
import { Controller, Get, Injectable, Module, Scope, Type } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { LockHandle, LockModule, LockService, WithLock } from '../../src/lock';

@Injectable()
class Counter {
  active = 0;
  maxActive = 0;
  calls: string[] = [];

  constructor(private readonly locks: LockService) {}

  @WithLock({ key: (name: string) => `lock:decorated:${name}`, ttlMs: 2_000 })
  async work(name: string, ms: number): Promise<{ handle: LockHandle | undefined }> {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    this.calls.push(name);
    await delay(ms);
    this.active--;
    return { handle: this.locks.current(`lock:decorated:${name}`) };
  }

  @WithLock({ key: () => 'lock:decorated:failing' })
  fail(): Promise<never> {
    return Promise.reject(new Error('boom'));
  }
}

async function compile(...providers: Type[]) {
  @Module({ imports: [LockModule.forRoot({ backend: 'memory' })], providers })
  class TestModule {}
  const moduleRef = await Test.createTestingModule({ imports: [TestModule] }).compile();
  return moduleRef.init();
}

describe('@WithLock', () => {
  it('runs decorated provider methods one at a time per key, with the handle in context', async () => {
    const app = await compile(Counter);
    const counter = app.get(Counter);
    const locks = app.get(LockService);
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => counter.work(i % 2 === 0 ? 'even' : 'odd', 20)),
    );
    // Two keys: at most two bodies at once, never two of the same key.
    expect(counter.maxActive).toBe(2);
    expect(results.every(({ handle }) => handle !== undefined)).toBe(true);
    expect(new Set(results.map(({ handle }) => handle!.fence)).size).toBe(4);
    expect((await locks.status('lock:decorated:even')).locked).toBe(false);

    await expect(counter.fail()).rejects.toThrow('boom');
    expect((await locks.status('lock:decorated:failing')).locked).toBe(false);
    await app.close();
  });

  it('refuses bad options at start-up', async () => {
    @Injectable()
    class BadTtl {
      @WithLock({ key: () => 'lock:x', ttlMs: -5 })
      run() {
        return Promise.resolve();
      }
    }
    await expect(compile(BadTtl)).rejects.toThrow(
      '@WithLock on BadTtl.run: ttlMs must be a positive integer',
    );

    @Injectable()
    class NoKey {
      @WithLock({ key: 'lock:x' as unknown as () => string })
      run() {
        return Promise.resolve();
      }
    }
    await expect(compile(NoKey)).rejects.toThrow('key must be a function');
  });

  it('refuses request-scoped providers and controllers at start-up', async () => {
    @Injectable({ scope: Scope.REQUEST })
    class PerRequest {
      @WithLock({ key: () => 'lock:x' })
      run() {
        return Promise.resolve();
      }
    }
    await expect(compile(PerRequest)).rejects.toThrow('request-scoped providers are not supported');

    @Controller('x')
    class Routes {
      @Get()
      @WithLock({ key: () => 'lock:x' })
      run() {
        return Promise.resolve();
      }
    }
    @Module({ imports: [LockModule.forRoot({ backend: 'memory' })], controllers: [Routes] })
    class WithController {}
    const moduleRef = await Test.createTestingModule({ imports: [WithController] }).compile();
    await expect(moduleRef.init()).rejects.toThrow('put it on a provider method');
  });

  it('refuses a redis backend without a client', async () => {
    @Module({ imports: [LockModule.forRoot({ backend: 'redis' })] })
    class NoClient {}
    await expect(Test.createTestingModule({ imports: [NoClient] }).compile()).rejects.toThrow(
      'the redis backend needs a `redis` client',
    );
  });
});
