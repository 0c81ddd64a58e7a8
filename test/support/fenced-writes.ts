import { Pool } from 'pg';
import { Fenced, PostgresFencing } from '../../src/lock';
import { runMigrations } from '../../src/database/migrator';
import { createFreshDatabase, FreshDatabase } from './fresh-database';

/**
 * A fresh, migrated database (lock_fences included) with a table of fenced writes: each write
 * runs through PostgresFencing.transaction and records the fence it was made with.
 */
export class FencedWrites {
  readonly fencing = new PostgresFencing();

  private constructor(
    private readonly database: FreshDatabase,
    readonly pool: Pool,
  ) {}

  static async create(): Promise<FencedWrites> {
    const database = await createFreshDatabase('vector_fencing');
    await runMigrations(database.url, { info: () => undefined });
    const pool = new Pool({ connectionString: database.url, max: 4 });
    await pool.query(
      'CREATE TABLE fenced_writes (seq bigserial, lock_key text, fence bigint, writer text)',
    );
    return new FencedWrites(database, pool);
  }

  /** One fenced write; the fence recorded is the lock's after the check (it may have raised). */
  write(lock: Fenced, writer: string): Promise<void> {
    return this.fencing.transaction(this.pool, lock, async (client) => {
      await client.query(
        'INSERT INTO fenced_writes (lock_key, fence, writer) VALUES ($1, $2, $3)',
        [lock.key, lock.fence, writer],
      );
    });
  }

  /** The committed writes of a key, in the order they were made (the tests write one at a time). */
  async writes(key: string): Promise<{ fence: number; writer: string }[]> {
    const { rows } = await this.pool.query<{ fence: string; writer: string }>(
      'SELECT fence, writer FROM fenced_writes WHERE lock_key = $1 ORDER BY seq',
      [key],
    );
    return rows.map((row) => ({ fence: Number(row.fence), writer: row.writer }));
  }

  /** What lock_fences holds for a key. */
  async recorded(key: string): Promise<{ fence: number; holderToken: string | null } | null> {
    const { rows } = await this.pool.query<{ fence: string; holder_token: string | null }>(
      'SELECT fence, holder_token FROM lock_fences WHERE lock_key = $1',
      [key],
    );
    return rows[0] ? { fence: Number(rows[0].fence), holderToken: rows[0].holder_token } : null;
  }

  async close(): Promise<void> {
    await this.pool.end();
    await this.database.drop();
  }
}
