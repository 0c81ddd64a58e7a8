/**
 * `npm run migrate`: applies pending migrations and exits. Reads DATABASE_URL from the
 * environment or from `.env`, like the service.
 */
import 'dotenv/config';
import { ConfigValidationError, validateEnv } from '../config/env.schema';
import { runMigrations } from './migrator';

async function main(): Promise<void> {
  const env = validateEnv(process.env);
  const applied = await runMigrations(env.DATABASE_URL, {
    info: (message) => console.log(message),
  });
  console.log(applied.length ? `${applied.length} migration(s) applied` : 'database is up to date');
}

main().catch((error: unknown) => {
  console.error(error instanceof ConfigValidationError ? error.message : error);
  process.exitCode = 1;
});
