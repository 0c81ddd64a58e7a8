import { Inject, Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { HealthIndicatorResult, HealthIndicatorService } from '@nestjs/terminus';
import { Pool } from 'pg';
import { Env } from '../config/env.schema';
import { PG_POOL } from '../database/database.constants';
import { LockService } from '../lock';
import { REDIS_CLIENT, RedisConnection } from '../redis/redis.constants';
import { ShutdownState } from '../lifecycle/shutdown-state';

/** pgvector releases before this build HNSW indexes with a parallel-build overflow bug. */
const PARALLEL_HNSW_SAFE_FROM = [0, 8, 2];

export function supportsParallelHnswBuild(version: string): boolean {
  const parts = version.split('.').map((part) => Number.parseInt(part, 10) || 0);
  for (let i = 0; i < PARALLEL_HNSW_SAFE_FROM.length; i++) {
    const [have, need] = [parts[i] ?? 0, PARALLEL_HNSW_SAFE_FROM[i]];
    if (have !== need) return have > need;
  }
  return true;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** Health of the service's dependencies, each bounded by HEALTH_CHECK_TIMEOUT_MS. */
@Injectable()
export class DependencyIndicators {
  private readonly timeoutMs: number;

  constructor(
    private readonly health: HealthIndicatorService,
    @Inject(REDIS_CLIENT) private readonly redis: RedisConnection,
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly shutdown: ShutdownState,
    private readonly locks: LockService,
    config: ConfigService<Env, true>,
  ) {
    this.timeoutMs = config.get('HEALTH_CHECK_TIMEOUT_MS', { infer: true });
  }

  async redisPing(): Promise<HealthIndicatorResult> {
    const indicator = this.health.check('redis');
    const started = performance.now();
    try {
      await withTimeout(this.redis.ping(), this.timeoutMs, 'Redis PING');
      return indicator.up({ latency_ms: round(performance.now() - started) });
    } catch (error) {
      return indicator.down({ message: messageOf(error), connection: this.redis.status });
    }
  }

  /** Postgres reachability and the pgvector extension, from one query. */
  async postgresAndPgvector(): Promise<HealthIndicatorResult> {
    const postgres = this.health.check('postgres');
    const pgvector = this.health.check('pgvector');
    const started = performance.now();
    try {
      const { rows } = await withTimeout(
        this.pool.query<{ server_version: string; pgvector: string | null }>(
          `SELECT current_setting('server_version') AS server_version,
                  (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector`,
        ),
        this.timeoutMs,
        'Postgres query',
      );
      const { server_version, pgvector: version } = rows[0];
      return {
        ...postgres.up({
          latency_ms: round(performance.now() - started),
          server_version,
          pool: {
            total: this.pool.totalCount,
            idle: this.pool.idleCount,
            waiting: this.pool.waitingCount,
          },
        }),
        ...(version
          ? pgvector.up({ version, parallel_hnsw_build: supportsParallelHnswBuild(version) })
          : pgvector.down({ message: 'the vector extension is not installed' })),
      };
    } catch (error) {
      return {
        ...postgres.down({ message: messageOf(error) }),
        ...pgvector.down({ message: 'unknown: Postgres is unreachable' }),
      };
    }
  }

  /** Postgres reachability only: the cheapest query that proves a connection works. */
  async postgresPing(): Promise<HealthIndicatorResult> {
    const indicator = this.health.check('postgres');
    try {
      await withTimeout(this.pool.query('SELECT 1'), this.timeoutMs, 'Postgres query');
      return indicator.up();
    } catch (error) {
      return indicator.down({ message: messageOf(error) });
    }
  }

  /** A real lock acquire + release on a key of this instance: the lock path works end to end. */
  async lockRoundTrip(): Promise<HealthIndicatorResult> {
    const indicator = this.health.check('locks');
    const started = performance.now();
    try {
      const handle = await withTimeout(
        this.locks.tryAcquire(`${this.locks.prefix}health:${this.locks.instanceId}`, {
          ttlMs: 5_000,
          operation: 'health-check',
        }),
        this.timeoutMs,
        'lock round trip',
      );
      await handle?.release();
      return indicator.up({
        backend: this.locks.backendKind,
        latency_ms: round(performance.now() - started),
      });
    } catch (error) {
      return indicator.down({ backend: this.locks.backendKind, message: messageOf(error) });
    }
  }

  accepting(): HealthIndicatorResult {
    const indicator = this.health.check('instance');
    return this.shutdown.isDraining ? indicator.down({ message: 'shutting down' }) : indicator.up();
  }
}

const round = (ms: number) => Math.round(ms * 100) / 100;
