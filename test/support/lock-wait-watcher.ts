import { Pool } from 'pg';

/**
 * Samples pg_stat_activity of one database while a scenario runs and remembers every service
 * backend found waiting on a heavyweight lock while running a statement that matches `pattern`.
 * Writers that hold the same distributed lock never wait for each other's row locks in
 * Postgres (the lock serialises them first); a backend waiting on the fence row or on item rows
 * means two holders were inside the critical section at once.
 */
export class LockWaitWatcher {
  readonly waits: string[] = [];
  samples = 0;
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    private readonly db: Pool,
    database: string,
    pattern: string,
    intervalMs = 10,
  ) {
    this.loop = (async () => {
      while (this.running) {
        try {
          const { rows } = await this.db.query<{ pid: number; query: string; wait: string }>(
            `SELECT pid, left(query, 120) AS query, wait_event AS wait FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'vector-service'
               AND wait_event_type = 'Lock' AND query ~ $2`,
            [database, pattern],
          );
          this.samples++;
          for (const row of rows) {
            if (this.waits.length < 10)
              this.waits.push(`pid ${row.pid} waited (${row.wait}) in: ${row.query}`);
          }
        } catch {
          // A lost sample is skipped.
        }
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
      }
    })();
  }

  async stop(): Promise<string[]> {
    this.running = false;
    await this.loop;
    return this.waits;
  }
}
