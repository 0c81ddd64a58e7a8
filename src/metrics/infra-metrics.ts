import { Inject, Injectable } from '@nestjs/common';
import { Pool } from 'pg';
import { Gauge, Registry } from 'prom-client';
import { PG_POOL } from '../database/database.constants';
import { REDIS_CLIENT, RedisConnection } from '../redis/redis.constants';

/** Postgres pool and Redis connection state, read at scrape time. */
@Injectable()
export class InfraMetrics {
  constructor(
    registry: Registry,
    @Inject(PG_POOL) pool: Pool,
    @Inject(REDIS_CLIENT) redis: RedisConnection,
  ) {
    new Gauge({
      name: 'pg_pool_connections',
      help: 'Postgres pool connections by state (total, idle, waiting clients).',
      labelNames: ['state'] as const,
      registers: [registry],
      collect() {
        this.set({ state: 'total' }, pool.totalCount);
        this.set({ state: 'idle' }, pool.idleCount);
        this.set({ state: 'waiting' }, pool.waitingCount);
      },
    });
    new Gauge({
      name: 'redis_connection_up',
      help: '1 while the Redis client is connected and ready, else 0.',
      registers: [registry],
      collect() {
        this.set(redis.status === 'ready' ? 1 : 0);
      },
    });
  }
}
