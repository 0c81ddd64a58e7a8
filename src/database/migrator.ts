import { join } from 'node:path';
import { runner } from 'node-pg-migrate';
import { Client } from 'pg';

export const MIGRATIONS_DIR = join(__dirname, 'migrations');
export const MIGRATIONS_TABLE = 'pgmigrations';
/** Session advisory lock that serialises migration runs of every replica. */
const MIGRATION_LOCK = 'vector-service:migrations';

export interface MigrationLog {
  info(message: string): void;
}

/**
 * Applies pending migrations, each in its own transaction. Replicas starting together queue on
 * a Postgres advisory lock: the first applies the migrations, the others then find nothing to
 * do. (node-pg-migrate's own lock is a try-lock that fails the other replicas' start-up
 * instead of making them wait.)
 */
export async function runMigrations(
  databaseUrl: string,
  log: MigrationLog,
  lockTimeoutMs = 300_000,
): Promise<string[]> {
  const client = new Client({
    connectionString: databaseUrl,
    application_name: 'vector-service:migrate',
  });
  await client.connect();
  try {
    await client.query(`SELECT set_config('lock_timeout', $1, false)`, [`${lockTimeoutMs}ms`]);
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [MIGRATION_LOCK]);
    await client.query('RESET lock_timeout');
    const applied = await runner({
      dbClient: client,
      dir: MIGRATIONS_DIR,
      direction: 'up',
      migrationsTable: MIGRATIONS_TABLE,
      count: Infinity,
      checkOrder: true,
      noLock: true,
      verbose: false,
      log: () => undefined,
    });
    for (const migration of applied) log.info(`applied migration ${migration.name}`);
    return applied.map((migration) => migration.name);
  } finally {
    // Ending the session releases the advisory lock.
    await client.end();
  }
}
