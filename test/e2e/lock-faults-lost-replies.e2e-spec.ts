import { randomBytes } from 'node:crypto';
import Redis, { RedisOptions } from 'ioredis';
import { LockBackendError, LockNotAcquiredError } from '../../src/lock';
import { siblingKey } from '../../src/lock/lock-keys';
import { LockMetrics } from '../../src/lock/lock.metrics';
import { LockService } from '../../src/lock/lock.service';
import { RedisLockBackend } from '../../src/lock/redis-lock.backend';
import { ACQUIRE, ACQUIRE_FAIR, FORCE_RELEASE, RELEASE } from '../../src/lock/redis-lock.scripts';
import { LuaScript } from '../../src/redis/lua-script';
import { PrivateRedis } from '../support/redis-server';
import { TcpProxy } from '../support/tcp-proxy';
import { waitFor } from '../support/wait';

const SCRIPTS = [ACQUIRE, ACQUIRE_FAIR, RELEASE, FORCE_RELEASE];
/** What EVALSHA sends of each script: its SHA, which picks the command out of the stream. */
const [SHA_ACQUIRE, SHA_ACQUIRE_FAIR, SHA_RELEASE, SHA_FORCE_RELEASE] = SCRIPTS.map(
  (lua) => new LuaScript(lua).sha,
);

/** The service's client settings (src/redis/redis.module.ts), with a quick reconnect. */
const SERVICE_CLIENT: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 1,
  retryStrategy: () => 50,
};

/**
 * Replies lost on the wire: a private redis-server behind a proxy that cuts the client's
 * connection right after forwarding one command, before its reply comes back. ioredis resends
 * the command on reconnect, so every script runs twice; it must have the effect of once.
 */
describe('locks when a Redis reply is lost', () => {
  let server: PrivateRedis;
  let proxy: TcpProxy;
  /** Straight to the server, for looking at what is really stored. */
  let direct: Redis;
  const closers: (() => Promise<unknown>)[] = [];
  const run = randomBytes(4).toString('hex');
  let counter = 0;
  const key = (name: string) => `lock:lost:${run}:${name}:${counter++}`;

  beforeAll(async () => {
    server = await PrivateRedis.start();
    proxy = await TcpProxy.start(server.port);
    direct = new Redis(server.url);
    // Loaded beforehand: a cut EVALSHA must be one that runs, not one answered NOSCRIPT.
    for (const lua of SCRIPTS) await direct.script('LOAD', lua);
  });

  afterEach(async () => {
    proxy.releaseNewConnections();
    for (const close of closers.splice(0).reverse()) await close();
  });

  afterAll(async () => {
    await proxy.close();
    direct.disconnect();
    await server.kill();
  });

  /** A LockService whose Redis connection runs through the proxy. */
  async function serviceThroughProxy(client: RedisOptions = {}) {
    const redis = new Redis(`redis://127.0.0.1:${proxy.port}`, { ...SERVICE_CLIENT, ...client });
    redis.on('error', () => undefined);
    await waitFor(() => redis.status === 'ready');
    const metrics = new LockMetrics();
    const locks = new LockService(
      new RedisLockBackend(redis, 'lock:__released'),
      { backend: 'redis', redis, backoffMs: 20, maxBackoffMs: 100 },
      metrics,
    );
    closers.push(async () => {
      await locks.onApplicationShutdown();
      redis.disconnect();
    });
    return { locks, redis, metrics };
  }

  const fenceOf = async (lockKey: string) => Number(await direct.get(siblingKey(lockKey, 'fence')));

  it.each([
    ['acquire', false],
    ['fair acquire', true],
  ])(
    '%s: the resent script finds the caller’s own token, grants it with the first run’s fence',
    async (_name, fair) => {
      const { locks } = await serviceThroughProxy();
      const lockKey = key(fair ? 'fair' : 'plain');
      const cut = proxy.cutOnce(fair ? SHA_ACQUIRE_FAIR : SHA_ACQUIRE);
      const handle = await locks.acquire(lockKey, { ttlMs: 10_000, waitTimeoutMs: 1_000, fair });
      await cut;
      // One fence issued, and the handle carries it; the stored value is ours, unmarked.
      expect(handle.fence).toBe(1);
      expect(await fenceOf(lockKey)).toBe(1);
      const value = await direct.get(lockKey);
      expect(value?.startsWith(`${handle.token}:`)).toBe(true);
      expect(value?.endsWith('!')).toBe(false);
      if (fair) expect(await direct.zcard(siblingKey(lockKey, 'queue'))).toBe(0);
      expect(await handle.release()).toBe(true);
      expect(await direct.exists(lockKey)).toBe(0);
    },
  );

  it('tryAcquire and acquireMany: the resent script answers as the first run did', async () => {
    const { locks } = await serviceThroughProxy();
    const single = key('try');
    let cut = proxy.cutOnce(SHA_ACQUIRE);
    const tried = await locks.tryAcquire(single, { ttlMs: 10_000 });
    await cut;
    expect(tried?.fence).toBe(1);
    await tried?.release();

    const [a, b] = [key('a'), key('b')].sort();
    cut = proxy.cutOnce(SHA_ACQUIRE);
    const both = await locks.acquireMany([a, b], { ttlMs: 10_000, waitTimeoutMs: 1_000 });
    await cut;
    expect(both.fences).toEqual({ [a]: 1, [b]: 1 });
    expect([await fenceOf(a), await fenceOf(b)]).toEqual([1, 1]);
    expect(await both.release()).toBe(true);
  });

  it('a caller that sees a backend error removes the token its lost attempt may have left', async () => {
    // No resend: the lost reply becomes an error for the caller.
    const { locks } = await serviceThroughProxy({ maxRetriesPerRequest: 0 });
    const lockKey = key('error');
    const cut = proxy.cutOnce(SHA_ACQUIRE);
    await expect(
      locks.acquire(lockKey, { ttlMs: 30_000, waitTimeoutMs: 0 }),
    ).rejects.toBeInstanceOf(LockBackendError);
    await cut;
    // The attempt ran: the caller's token was stored. Once the client is back it is removed,
    // long before its 30 s lease would have run out.
    await waitFor(async () => (await direct.exists(lockKey)) === 0, { timeoutMs: 5_000 });
    expect(await fenceOf(lockKey)).toBe(1);
    const next = await locks.acquire(lockKey, { ttlMs: 1_000, waitTimeoutMs: 0 });
    expect(next.fence).toBe(2);
    await next.release();
  });

  it('a caller that gives up removes what its attempts took (part of a multi-key lock)', async () => {
    const { locks } = await serviceThroughProxy();
    const other = await serviceThroughProxy();
    const [a, b] = [key('a'), key('b')].sort();
    // The first run takes both keys; before its resend, b changes hands.
    proxy.holdNewConnections();
    const cut = proxy.cutOnce(SHA_ACQUIRE);
    const taking = locks
      .acquireMany([a, b], { ttlMs: 30_000, waitTimeoutMs: 500 })
      .catch((error: unknown) => error);
    await cut;
    expect(await other.locks.forceRelease(b, { by: 'test' })).toMatchObject({ released: true });
    const intruder = await other.locks.acquire(b, { ttlMs: 30_000, waitTimeoutMs: 0 });
    proxy.releaseNewConnections();

    expect(await taking).toBeInstanceOf(LockNotAcquiredError);
    // a, which the lost attempt took, is free again at once; b stays with the one holding it.
    expect(await direct.exists(a)).toBe(0);
    expect((await direct.get(b))?.startsWith(`${intruder.token}:`)).toBe(true);
    await intruder.release();
  });

  it('force-release: the resent script does not evict the holder that came next', async () => {
    const { locks } = await serviceThroughProxy();
    const other = await serviceThroughProxy();
    for (const withFence of [false, true]) {
      const lockKey = key(withFence ? 'forced-fence' : 'forced');
      const stuck = await other.locks.acquire(lockKey, { ttlMs: 30_000, operation: 'stuck' });
      // The first run removes the stuck holder; the next one acquires before the resend.
      proxy.holdNewConnections();
      const cut = proxy.cutOnce(SHA_FORCE_RELEASE);
      const forcing = locks.forceRelease(lockKey, {
        by: 'ops',
        ...(withFence && { fence: stuck.fence }),
      });
      await cut;
      const next = await other.locks.acquire(lockKey, { ttlMs: 30_000, operation: 'next' });
      proxy.releaseNewConnections();

      // The operator is told what happened: the stuck holder was removed.
      expect(await forcing).toMatchObject({
        released: true,
        previousHolder: { operation: 'stuck' },
        fence: stuck.fence + 1,
      });
      expect(next.fence).toBe(stuck.fence + 2);
      expect((await locks.status(lockKey)).holder?.operation).toBe('next');
      expect(await next.release()).toBe(true);
    }
  });

  it('a release that fails at the backend can be retried, and renewals stop meanwhile', async () => {
    const { locks } = await serviceThroughProxy({ maxRetriesPerRequest: 0 });
    const lockKey = key('release');
    const handle = await locks.acquire(lockKey, { ttlMs: 600, renew: true, waitTimeoutMs: 0 });
    // The release never reaches Redis: the connection drops as it is sent.
    const cut = proxy.cutOnce(SHA_RELEASE, { when: 'before' });
    await expect(handle.release()).rejects.toBeInstanceOf(LockBackendError);
    await cut;
    expect(await direct.exists(lockKey)).toBe(1);
    await waitFor(() => locks.status(lockKey).then(() => true), { intervalMs: 20 });
    expect(await handle.release()).toBe(true);
    expect(await direct.exists(lockKey)).toBe(0);

    // Not retried: the holder let go, so the lease is not renewed; it runs out by itself.
    const abandoned = await locks.acquire(lockKey, { ttlMs: 600, renew: true, waitTimeoutMs: 0 });
    const cutAgain = proxy.cutOnce(SHA_RELEASE, { when: 'before' });
    await expect(abandoned.release()).rejects.toBeInstanceOf(LockBackendError);
    await cutAgain;
    await waitFor(async () => (await direct.exists(lockKey)) === 0, { timeoutMs: 3_000 });
    expect(abandoned.signal.aborted).toBe(true);
    expect(await abandoned.release()).toBe(false);
  });
});
