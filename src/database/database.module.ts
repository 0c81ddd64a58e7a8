import { Global, Inject, Logger, Module, OnApplicationShutdown } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Pool } from 'pg';
import pgvector from 'pgvector/pg';
import { AppConfigService } from '../config/app-config.module';
import { PG_POOL } from './database.constants';
import { DedicatedConnections } from './dedicated-connections';
import { runMigrations } from './migrator';

const logger = new Logger('Database');

async function createPool(config: AppConfigService): Promise<Pool> {
  const connectionString = config.get('DATABASE_URL', { infer: true });
  // Migrations first: they create the vector extension that every pooled connection's type
  // registration below looks up.
  if (config.get('MIGRATE_ON_START', { infer: true })) {
    await runMigrations(connectionString, { info: (message) => logger.log(message) });
  }
  const pool = new Pool({
    connectionString,
    max: config.get('DATABASE_POOL_MAX', { infer: true }),
    connectionTimeoutMillis: config.get('DATABASE_CONNECT_TIMEOUT_MS', { infer: true }),
    idleTimeoutMillis: 30_000,
    application_name: 'vector-service',
    // The search breadth for every connection, so a search needs no transaction around a
    // SET LOCAL (one round trip instead of three) unless it asks for more than this.
    // A replica paused inside a transaction (SIGSTOP, a frozen VM) holds its row locks — a
    // lock's fence row among them — until Postgres ends its idle session.
    options:
      `-c hnsw.ef_search=${config.get('SEARCH_EF_SEARCH', { infer: true })}` +
      ` -c idle_in_transaction_session_timeout=${config.get('DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS', { infer: true })}`,
    // Awaited for every new connection before it is handed out (unlike pool.on('connect')).
    // eslint-disable-next-line @typescript-eslint/no-misused-promises -- pg-pool awaits it; @types/pg says void
    onConnect: (client) => pgvector.registerTypes(client),
  });
  // An idle client losing its connection emits 'error' on the pool; unhandled it would crash.
  pool.on('error', (error) => logger.warn(`idle connection error: ${error.message}`));
  // A checked-out client emits 'error' on itself (a terminated backend, a restart), which pg-pool
  // does not listen to while the client is lent out: unhandled, it would end the process. The
  // query in flight fails with the same error (answered 503), and the pool discards the client.
  pool.on('connect', (client) =>
    client.on('error', (error) => logger.warn(`connection error: ${error.message}`)),
  );
  return pool;
}

class DatabaseLifecycle implements OnApplicationShutdown {
  constructor(@Inject(PG_POOL) private readonly pool: Pool) {}

  async onApplicationShutdown(): Promise<void> {
    // Runs after the HTTP server has drained, so no request still holds a connection.
    await this.pool.end();
  }
}

@Global()
@Module({
  providers: [
    { provide: PG_POOL, inject: [ConfigService], useFactory: createPool },
    DatabaseLifecycle,
    DedicatedConnections,
  ],
  exports: [PG_POOL, DedicatedConnections],
})
export class DatabaseModule {}
