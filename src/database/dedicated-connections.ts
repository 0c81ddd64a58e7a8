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

  /** The server process of a dedicated connection, to cancel what it runs (cancelStatement). */
  async backendPid(client: Client): Promise<number> {
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    return rows[0].pid;
  }

  /**
   * Cancels the statement a dedicated connection is running (an index build: minutes), from a
   * connection of its own; the session lives on, its transaction fails. Best effort.
   */
  async cancelStatement(pid: number): Promise<void> {
    const client = await this.open('cancel').catch(() => undefined);
    if (!client) return;
    try {
      await client.query('SELECT pg_cancel_backend($1)', [pid]);
    } catch (error) {
      this.logger.warn(`could not cancel backend ${pid}: ${String(error)}`);
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}
