import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { Fenced, LockService, PostgresFencing, StaleFenceError } from '../../src/lock';
import { PG_POOL } from '../../src/database/database.constants';
import { TestApp, startTestApp } from '../support/app';

describe('Postgres fencing', () => {
  let app: TestApp;
  let pool: Pool;
  const fencing = new PostgresFencing();
  const key = (name: string) => `lock:fencing:${randomBytes(4).toString('hex')}:${name}`;

  beforeAll(async () => {
    app = await startTestApp();
    pool = app.app.get<Pool>(PG_POOL);
    await pool.query(
      'CREATE TABLE IF NOT EXISTS fencing_test_writes (lock_key text, fence bigint)',
    );
  });

  afterAll(async () => {
    await app.close();
  });

  const write = (lock: Fenced) =>
    fencing.transaction(pool, lock, (client) =>
      client.query('INSERT INTO fencing_test_writes VALUES ($1, $2)', [lock.key, lock.fence]),
    );

  const writes = async (lockKey: string) =>
    (
      await pool.query<{ fence: string }>(
        'SELECT fence FROM fencing_test_writes WHERE lock_key = $1 ORDER BY fence',
        [lockKey],
      )
    ).rows.map((row) => Number(row.fence));

  it('accepts the same (same holder) or a newer fence and rolls back a write with an older one', async () => {
    const lockKey = key('order');
    await write({ key: lockKey, fence: 5, token: 'holder' });
    await write({ key: lockKey, fence: 5, token: 'holder' });
    await expect(write({ key: lockKey, fence: 4 })).rejects.toBeInstanceOf(StaleFenceError);
    await write({ key: lockKey, fence: 9 });
    await expect(write({ key: lockKey, fence: 5 })).rejects.toBeInstanceOf(StaleFenceError);
    expect(await writes(lockKey)).toEqual([5, 5, 9]);
  });

  it('serialises concurrent writers in fence order: the older one waits, then fails', async () => {
    const lockKey = key('race');
    const newer = await pool.connect();
    try {
      await newer.query('BEGIN');
      await fencing.check(newer, { key: lockKey, fence: 2 });
      // The older holder blocks on the fence row until the newer one commits, then is refused.
      const older = write({ key: lockKey, fence: 1 });
      await newer.query('INSERT INTO fencing_test_writes VALUES ($1, 2)', [lockKey]);
      await newer.query('COMMIT');
      await expect(older).rejects.toBeInstanceOf(StaleFenceError);
    } finally {
      newer.release();
    }
    expect(await writes(lockKey)).toEqual([2]);
  });

  it('rejects the evicted holder after a force-release, before any new holder writes', async () => {
    const locks = app.app.get(LockService);
    expect(locks.backendKind).toBe('redis');
    const lockKey = key('forced');
    const handle = await locks.acquire(lockKey, { ttlMs: 10_000 });
    await write(handle);
    const result = await locks.forceRelease(lockKey, { by: 'test' });
    expect(result.fence).toBe(handle.fence + 1);
    await expect(write(handle)).rejects.toBeInstanceOf(StaleFenceError);
    expect(await writes(lockKey)).toEqual([handle.fence]);
  });
});
