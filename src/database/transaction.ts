import type { ClientBase, Pool, PoolClient } from 'pg';

/** Runs `work` in a transaction on its own pooled connection: COMMIT, or ROLLBACK on any error. */
export async function withTransaction<T>(
  pool: Pool,
  work: (client: PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    return await withTransactionOn(client, work);
  } finally {
    // A client whose connection broke is not queryable; pg-pool discards it instead of reusing it.
    client.release();
  }
}

/** Runs `work` in a transaction on a connection the caller holds: COMMIT, or ROLLBACK on error. */
export async function withTransactionOn<C extends ClientBase, T>(
  client: C,
  work: (client: C) => Promise<T>,
): Promise<T> {
  await client.query('BEGIN');
  try {
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}
