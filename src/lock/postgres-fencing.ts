import type { Pool, PoolClient } from 'pg';
import { withTransaction } from '../database/transaction';
import { StaleFenceError } from './lock.errors';

/** What a fenced write needs from a lock handle. */
export interface Fenced {
  key: string;
  fence: number;
}

/**
 * Fencing tokens checked by Postgres (table `lock_fences`, created by the migrations). A write
 * made under a lock first records the lock's fence in the same transaction; the guarded upsert
 * keeps the row locked until commit, so writers are serialised in fence order and a holder whose
 * fence is below the recorded one — its lease lapsed and a newer holder wrote — is refused.
 * An equal fence is the same lease writing again and passes.
 */
export class PostgresFencing {
  /** Inside the caller's transaction: records the fence or throws StaleFenceError. */
  async check(client: PoolClient, lock: Fenced): Promise<void> {
    const { rowCount } = await client.query(
      `INSERT INTO lock_fences (lock_key, fence) VALUES ($1, $2)
       ON CONFLICT (lock_key) DO UPDATE SET fence = EXCLUDED.fence, updated_at = now()
       WHERE lock_fences.fence <= EXCLUDED.fence`,
      [lock.key, lock.fence],
    );
    if (rowCount === 0) throw new StaleFenceError(lock.key, lock.fence);
  }

  /** Runs `work` in a transaction that starts with the fence check; rolls back on any error. */
  transaction<T>(pool: Pool, lock: Fenced, work: (client: PoolClient) => Promise<T>): Promise<T> {
    return withTransaction(pool, async (client) => {
      await this.check(client, lock);
      return work(client);
    });
  }

  /** Raises the recorded fence (after a force-release) so writes below it are refused. */
  async advance(pool: Pool, lock: Fenced): Promise<void> {
    await pool.query(
      `INSERT INTO lock_fences (lock_key, fence) VALUES ($1, $2)
       ON CONFLICT (lock_key) DO UPDATE SET fence = EXCLUDED.fence, updated_at = now()
       WHERE lock_fences.fence < EXCLUDED.fence`,
      [lock.key, lock.fence],
    );
  }
}
