import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { PostgresFencing } from '../../src/lock';
import { TestApp, startTestApp } from '../support/app';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';

/**
 * A writer paused inside its fenced transaction (a SIGSTOPped replica, a frozen VM) keeps the
 * fence row locked: the next holder's check queues behind it. Postgres ends such an idle
 * session after DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS, so the next holder writes within that
 * bound, and the paused one's transaction is gone.
 */
describe('a writer paused inside its fenced transaction', () => {
  let database: FreshDatabase;
  let app: TestApp;
  let pool: Pool;
  const fencing = new PostgresFencing();

  beforeAll(async () => {
    database = await createFreshDatabase();
    app = await startTestApp({
      DATABASE_URL: database.url,
      DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: '1000',
    });
    pool = app.app.get<Pool>(PG_POOL);
  });

  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });

  it('holds up the next holder no longer than the idle-in-transaction timeout', async () => {
    const key = 'lock:paused:writer';
    const paused = await pool.connect();
    try {
      await paused.query('BEGIN');
      await fencing.check(paused, { key, fence: 1, token: 'paused' });
      // ...and then nothing more from it: its session sits idle holding the fence row.
      const started = performance.now();
      await fencing.transaction(pool, { key, fence: 2, token: 'next' }, () => Promise.resolve());
      const waited = performance.now() - started;
      expect(waited).toBeGreaterThan(500);
      expect(waited).toBeLessThan(5_000);
      // The paused writer's transaction was ended by Postgres: nothing of it can commit.
      await expect(paused.query('COMMIT')).rejects.toThrow();
      const { rows } = await pool.query<{ fence: string; holder_token: string }>(
        'SELECT fence, holder_token FROM lock_fences WHERE lock_key = $1',
        [key],
      );
      expect(rows).toEqual([{ fence: '2', holder_token: 'next' }]);
    } finally {
      paused.release(true);
    }
  });
});
