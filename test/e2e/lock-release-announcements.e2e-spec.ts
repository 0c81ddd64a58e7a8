import Redis from 'ioredis';
import { decodeLockValue } from '../../src/lock/lock-backend';
import { LockFixture, counterTotal, lockFixture } from '../support/locks';
import { TEST_REDIS_URL } from '../support/env';
import { waitFor } from '../support/wait';

const CHANNEL = 'lock:__released';

/**
 * Redis backend: a release is published only when a waiter asked for it, by marking the value
 * of the lock that turned it away. Checked on the channel itself, beside the lock values.
 */
describe('lock release announcements (Redis)', () => {
  let fx: LockFixture;
  let redis: Redis;
  let subscriber: Redis;
  const heard: string[] = [];

  beforeAll(async () => {
    redis = new Redis(TEST_REDIS_URL);
    subscriber = new Redis(TEST_REDIS_URL);
    subscriber.on('message', (_channel: string, key: string) => heard.push(key));
    await subscriber.subscribe(CHANNEL);
  });

  beforeEach(() => {
    fx = lockFixture('redis', { backoffMs: 10, maxBackoffMs: 50 });
  });

  afterEach(async () => {
    await fx.close();
  });

  afterAll(async () => {
    await subscriber.quit();
    await redis.quit();
  });

  /**
   * The releases of `keys` heard so far (other test files share the channel). Messages on one
   * connection arrive in order: once `marker` is heard, any release before it was too.
   */
  async function heardBefore(marker: string, keys: string[]): Promise<string[]> {
    await redis.publish(CHANNEL, marker);
    await waitFor(() => Promise.resolve(heard.includes(marker)));
    return heard.splice(0).filter((key) => keys.includes(key));
  }

  it('publishes nothing for uncontended and try-once locks, and one message for a waited-on lock', async () => {
    const quiet = fx.key('quiet');
    for (let i = 0; i < 5; i++) await (await fx.locks.acquire(quiet)).release();
    const held = await fx.locks.acquire(quiet, { ttlMs: 10_000 });
    // A caller that will not wait does not ask to be woken.
    expect(await fx.locks.tryAcquire(quiet)).toBeNull();
    expect(await redis.get(quiet)).not.toMatch(/!$/);
    await held.release();
    expect(await heardBefore('marker-1', [quiet])).toEqual([]);

    const busy = fx.key('busy');
    const holder = await fx.locks.acquire(busy, { ttlMs: 10_000 });
    const conflicts = await counterTotal(fx.metrics.conflicts);
    const waiter = fx.locks.acquire(busy, { waitTimeoutMs: 5_000 });
    await waitFor(async () => (await counterTotal(fx.metrics.conflicts)) > conflicts);
    expect(await redis.get(busy)).toMatch(/!$/);
    await holder.release();
    await (await waiter).release();
    expect(await heardBefore('marker-2', [quiet, busy])).toEqual([busy]);
  });

  it('keeps a marked lock fully usable: status decodes its holder, the owner extends and releases it', async () => {
    const key = fx.key();
    const holder = await fx.locks.acquire(key, { ttlMs: 10_000, operation: 'marked' });
    const conflicts = await counterTotal(fx.metrics.conflicts);
    const waiter = fx.locks.acquire(key, { waitTimeoutMs: 5_000 });
    await waitFor(async () => (await counterTotal(fx.metrics.conflicts)) > conflicts + 1);
    const value = (await redis.get(key))!;
    // Marked once, however many times the waiter was turned away.
    expect(value).toMatch(/[^!]!$/);
    expect(decodeLockValue(value)).toMatchObject({ operation: 'marked', pid: process.pid });
    expect((await fx.locks.status(key)).holder).toMatchObject({ operation: 'marked' });
    await holder.extend(20_000);
    expect(await redis.pttl(key)).toBeGreaterThan(15_000);
    expect(await holder.release()).toBe(true);
    await (await waiter).release();
    expect(await heardBefore('marker-2b', [key])).toEqual([key]);
  });

  it('marks a fair holder that took the lock with others still queued', async () => {
    // Step by step on the backend, so no waiter's retry can add the mark instead.
    const key = fx.key();
    const holder = JSON.stringify({ instanceId: 'test', pid: 0, acquiredAt: 0 });
    const attempt = (token: string) =>
      fx.backend.tryAcquireFair(key, token, 10_000, holder, 60_000);
    expect(await attempt('a')).toMatchObject({ acquired: true });
    expect(await redis.get(key)).not.toMatch(/!$/);
    expect(await attempt('b')).toMatchObject({ acquired: false });
    expect(await attempt('c')).toMatchObject({ acquired: false });
    expect(await redis.get(key)).toMatch(/^a:.*[^!]!$/);
    await fx.backend.release([key], 'a');
    expect(await attempt('b')).toMatchObject({ acquired: true });
    // c is still queued, so b's release must wake it.
    expect(await redis.get(key)).toMatch(/^b:.*!$/);
    await fx.backend.release([key], 'b');
    expect(await attempt('c')).toMatchObject({ acquired: true });
    expect(await redis.get(key)).not.toMatch(/!$/);
    await fx.backend.release([key], 'c');
    expect(await heardBefore('marker-3', [key])).toEqual([key, key]);
  });
});
