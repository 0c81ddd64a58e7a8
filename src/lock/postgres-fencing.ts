import type { ClientBase, Pool, PoolClient } from 'pg';
import { withTransaction } from '../database/transaction';
import { StaleFenceError } from './lock.errors';

/** What a fenced write needs from a lock handle (LockHandle satisfies it). */
export interface Fenced {
  key: string;
  fence: number;
  /** The holder's owner token: an equal fence passes only for the holder that recorded it. */
  token?: string;
  /**
   * Proves the caller still holds the lock and moves its fence above `atLeast` (see
   * LockHandle.raiseFence); null when it no longer holds it.
   */
  raiseFence?(atLeast: number): Promise<number | null>;
}

// Records (fence, holder) when the fence is newer than the recorded one, or the same fence of
// the same holder. ON CONFLICT locks the row even when the WHERE refuses the update, so the
// holder stays serialised with every other writer until its transaction ends.
const RECORD_FENCE = `
  INSERT INTO lock_fences (lock_key, fence, holder_token) VALUES ($1, $2, $3)
  ON CONFLICT (lock_key) DO UPDATE
    SET fence = EXCLUDED.fence, holder_token = EXCLUDED.holder_token, updated_at = now()
  WHERE lock_fences.fence < EXCLUDED.fence
     OR (lock_fences.fence = EXCLUDED.fence AND lock_fences.holder_token = EXCLUDED.holder_token)`;

/**
 * Locks whose fence a check has accepted (in this process). Once accepted, a refusal can only
 * mean that another holder wrote after it, so such a lock never raises its fence again: two
 * holders that each believe they hold the lock (a failover) cannot take turns.
 */
const accepted = new WeakSet<Fenced>();

/**
 * Fencing tokens checked by Postgres (table `lock_fences`, created by the migrations). A write
 * made under a lock first records the lock's fence and owner token in the same transaction; the
 * guarded upsert keeps the row locked until commit, so writers are serialised in fence order.
 * A fence below the recorded one is stale (a newer holder wrote); an equal fence is valid only
 * for the holder that recorded it.
 *
 * Redis can hand out a fence that is not above the recorded one although the holder is the
 * rightful one: after a restart without persistence (counters back at 0) or a failover that lost
 * the last acquires. A refused holder that still holds its lock in Redis raises its fence there
 * above the recorded one and writes once more (see raiseFence); a holder that lost its lock
 * cannot, and stays refused.
 */
export class PostgresFencing {
  /** Inside the caller's transaction: records the fence (raising it if needed) or throws StaleFenceError. */
  async check(client: ClientBase, lock: Fenced): Promise<void> {
    if (!(await this.record(client, lock))) {
      if (!lock.raiseFence || accepted.has(lock)) throw new StaleFenceError(lock.key, lock.fence);
      const { rows } = await client.query<{ fence: string }>(
        'SELECT fence FROM lock_fences WHERE lock_key = $1',
        [lock.key],
      );
      // A refused upsert updates no row and leaves the transaction usable for this retry.
      const raised = await lock.raiseFence(Number(rows[0].fence));
      if (raised === null || !(await this.record(client, lock))) {
        throw new StaleFenceError(lock.key, lock.fence);
      }
    }
    accepted.add(lock);
  }

  /** Runs `work` in a transaction that starts with the fence check; rolls back on any error. */
  transaction<T>(pool: Pool, lock: Fenced, work: (client: PoolClient) => Promise<T>): Promise<T> {
    return withTransaction(pool, async (client) => {
      await this.check(client, lock);
      return work(client);
    });
  }

  /**
   * Whether a newer holder than `lock` has recorded its fence: a plain read, which neither waits
   * for nor holds the fence row. For long work between fenced transactions, to stop early.
   */
  async isSuperseded(
    db: Pool | ClientBase,
    lock: Pick<Fenced, 'key' | 'fence' | 'token'>,
  ): Promise<boolean> {
    const { rows } = await db.query<{ fence: string; holder_token: string | null }>(
      'SELECT fence, holder_token FROM lock_fences WHERE lock_key = $1',
      [lock.key],
    );
    if (rows.length === 0) return false;
    const recorded = Number(rows[0].fence);
    return (
      recorded > lock.fence ||
      (recorded === lock.fence && rows[0].holder_token !== (lock.token ?? null))
    );
  }

  /**
   * Raises the recorded fence (after a force-release) so writes below it are refused. It is
   * recorded without a holder, so nobody can write with this fence itself either.
   */
  async advance(pool: Pool, lock: Pick<Fenced, 'key' | 'fence'>): Promise<void> {
    await pool.query(
      `INSERT INTO lock_fences (lock_key, fence, holder_token) VALUES ($1, $2, NULL)
       ON CONFLICT (lock_key) DO UPDATE
         SET fence = EXCLUDED.fence, holder_token = NULL, updated_at = now()
       WHERE lock_fences.fence < EXCLUDED.fence`,
      [lock.key, lock.fence],
    );
  }

  private async record(client: ClientBase, lock: Fenced): Promise<boolean> {
    const { rowCount } = await client.query(RECORD_FENCE, [
      lock.key,
      lock.fence,
      lock.token ?? null,
    ]);
    return rowCount !== 0;
  }
}
