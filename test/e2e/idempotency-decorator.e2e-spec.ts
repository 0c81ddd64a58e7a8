import { setTimeout as delay } from 'node:timers/promises';
import { Injectable, Module, Type } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { IdempotencyModule, Idempotent, SingleflightOutcome } from '../../src/idempotency';

@Injectable()
class Rebuilder {
  runs = 0;

  @Idempotent({
    key: (namespace: string) => `idem:decorated:${namespace}`,
    scope: 'rebuild',
    ttlSeconds: 60,
    inProgressTtl: 5,
    force: (_namespace: string, force?: boolean) => force === true,
  })
  async rebuild(namespace: string, _force?: boolean): Promise<unknown> {
    this.runs++;
    await delay(50);
    return { namespace, run: this.runs };
  }
}

async function compile(...providers: Type[]) {
  @Module({ imports: [IdempotencyModule.forRoot({ backend: 'memory' })], providers })
  class TestModule {}
  const moduleRef = await Test.createTestingModule({ imports: [TestModule] }).compile();
  return moduleRef.init();
}

describe('@Idempotent', () => {
  it('runs a decorated provider method once per key and returns the singleflight outcome', async () => {
    const app = await compile(Rebuilder);
    const rebuilder = app.get(Rebuilder);
    const call = (ns: string, force?: boolean) =>
      rebuilder.rebuild(ns, force) as Promise<SingleflightOutcome<{ run: number }>>;
    const outcomes = await Promise.all([call('math'), call('math'), call('math'), call('art')]);
    expect(rebuilder.runs).toBe(2);
    expect(outcomes.filter((o) => o.status === 'done' && o.replayed)).toHaveLength(2);
    const math = outcomes[0].status === 'done' ? outcomes[0].result : undefined;
    expect(await call('math')).toEqual({ status: 'done', replayed: true, result: math });
    expect(await call('math', true)).toMatchObject({
      status: 'done',
      replayed: false,
      result: { run: 3 },
    });
    await app.close();
  });

  it('refuses bad options at start-up', async () => {
    @Injectable()
    class NoScope {
      @Idempotent({ key: () => 'idem:x', scope: '' })
      run() {
        return Promise.resolve();
      }
    }
    await expect(compile(NoScope)).rejects.toThrow('@Idempotent on NoScope.run: scope is required');

    @Injectable()
    class BadTtl {
      @Idempotent({ key: () => 'idem:x', scope: 's', inProgressTtl: 0 })
      run() {
        return Promise.resolve();
      }
    }
    await expect(compile(BadTtl)).rejects.toThrow('inProgressTtl must be a positive number');
  });
});
