import Redis from 'ioredis';
import { LockService } from '../../src/lock';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { LuaScript } from '../../src/redis/lua-script';
import { PrivateRedis } from '../support/redis-server';

/** Calls of one command since the server started, from INFO commandstats. */
async function calls(redis: Redis, command: string): Promise<number> {
  const stats = await redis.info('commandstats');
  const match = new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(stats);
  return match ? Number(match[1]) : 0;
}

// A private server: INFO commandstats and SCRIPT FLUSH are server-wide.
describe('Lua scripts: loaded once, reloaded after NOSCRIPT', () => {
  let server: PrivateRedis;
  let redis: Redis;

  beforeAll(async () => {
    server = await PrivateRedis.start();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });

  afterAll(async () => {
    await redis?.quit();
    await server?.kill();
  });

  it('sends the script body once, then only its SHA; after SCRIPT FLUSH it loads it again', async () => {
    const script = new LuaScript(`return {KEYS[1], ARGV[1], #KEYS}`);
    expect(await script.run(redis, ['lua:a'], ['x'])).toEqual(['lua:a', 'x', 1]);
    expect(await calls(redis, 'eval')).toBe(1);
    for (let i = 0; i < 20; i++) {
      expect(await script.run(redis, ['lua:b', 'lua:c'], [i])).toEqual(['lua:b', String(i), 2]);
    }
    expect(await calls(redis, 'eval')).toBe(1);
    expect(await calls(redis, 'evalsha')).toBe(21);

    await redis.script('FLUSH');
    expect(await script.run(redis, ['lua:d'], ['y'])).toEqual(['lua:d', 'y', 1]);
    expect(await calls(redis, 'eval')).toBe(2);
  });

  it('passes other script errors through without a retry', async () => {
    const script = new LuaScript(`return redis.error_reply('BROKEN on purpose')`);
    await expect(script.run(redis, ['lua:e'], [])).rejects.toThrow('BROKEN on purpose');
    const evals = await calls(redis, 'eval');
    await expect(script.run(redis, ['lua:e'], [])).rejects.toThrow('BROKEN on purpose');
    expect(await calls(redis, 'eval')).toBe(evals);
  });

  it('keeps locks working when the server forgets its scripts', async () => {
    const locks = new LockService(
      new RedisLockBackend(redis, 'lock:__released'),
      { backend: 'redis', redis },
      new LockMetrics(),
    );
    try {
      const first = await locks.acquire('lock:lua:key', { ttlMs: 5_000 });
      await redis.script('FLUSH');
      await first.extend(6_000);
      await redis.script('FLUSH');
      expect(await first.release()).toBe(true);
      await redis.script('FLUSH');
      const second = await locks.acquire('lock:lua:key', { ttlMs: 5_000 });
      expect(second.fence).toBe(first.fence + 1);
      await second.release();
    } finally {
      await locks.onApplicationShutdown();
    }
  });
});
