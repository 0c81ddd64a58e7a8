import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Client } from 'pg';
import { Env } from '../config/env.schema';

/**
 * Connections outside the pool, for work that keeps one session for a long time (a rebuild
 * holds a session advisory lock on one for its whole run). Taken from the pool, a handful of
 * such sessions would leave nothing for the statements their own work sends meanwhile, and
 * every one of them would wait for a connection that none of them gives back.
 */
@Injectable()
export class DedicatedConnections {
  private readonly logger = new Logger('Database');

  constructor(private readonly config: ConfigService<Env, true>) {}

  /** A connected client; the caller ends it. Its connection errors are logged, never thrown. */
  async open(purpose: string): Promise<Client> {
    const client = new Client({
      connectionString: this.config.get('DATABASE_URL', { infer: true }),
      connectionTimeoutMillis: this.config.get('DATABASE_CONNECT_TIMEOUT_MS', { infer: true }),
      application_name: `vector-service:${purpose}`,
    });
    // As for pooled clients: a terminated backend must fail the statement, not the process.
    client.on('error', (error) =>
      this.logger.warn(`${purpose} connection error: ${error.message}`),
    );
    await client.connect();
    return client;
  }
}
