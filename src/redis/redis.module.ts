import { once } from 'node:events';
import {
  Global,
  Inject,
  Logger,
  Module,
  OnApplicationShutdown,
  OnModuleInit,
} from '@nestjs/common';
import Redis from 'ioredis';
import { AppConfigService } from '../config/app-config.module';
import { Env } from '../config/env.schema';
import { ConfigService } from '@nestjs/config';
import { REDIS_CLIENT } from './redis.constants';

const logger = new Logger('Redis');

function createRedisClient(config: AppConfigService): Redis {
  const client = new Redis(config.get('REDIS_URL', { infer: true }), {
    password: config.get('REDIS_PASSWORD', { infer: true }),
    db: config.get('REDIS_DB', { infer: true }),
    connectionName: 'vector-service',
    // Connect in onModuleInit, once every provider exists: a start-up that fails earlier (say,
    // on migrations) then leaves no socket or reconnect timer behind.
    lazyConnect: true,
    connectTimeout: config.get('REDIS_CONNECT_TIMEOUT_MS', { infer: true }),
    // Fail fast while disconnected instead of queueing: callers (locks, health) must see the
    // outage at once and answer 503 rather than hang or act on stale assumptions.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2_000),
  });
  // One log line per state change, not one per failed reconnect attempt.
  let healthy = true;
  client.on('ready', () => {
    if (!healthy) logger.log('connection restored');
    healthy = true;
  });
  client.on('error', (error: Error) => {
    if (healthy) logger.warn(`connection lost: ${error.message}`);
    healthy = false;
  });
  return client;
}

class RedisLifecycle implements OnModuleInit, OnApplicationShutdown {
  constructor(
    @Inject(REDIS_CLIENT) private readonly client: Redis,
    private readonly config: ConfigService<Env, true>,
  ) {}

  /**
   * Waits up to REDIS_CONNECT_TIMEOUT_MS for the first connection, then starts regardless: with
   * Redis down the service is live but not ready, and the client keeps reconnecting.
   */
  async onModuleInit(): Promise<void> {
    this.client.connect().catch(() => undefined);
    const timeoutMs = this.config.get('REDIS_CONNECT_TIMEOUT_MS', { infer: true });
    try {
      await once(this.client, 'ready', { signal: AbortSignal.timeout(timeoutMs) });
    } catch {
      logger.warn(
        `not connected after ${timeoutMs} ms; starting anyway, readiness fails until it is`,
      );
    }
  }

  async onApplicationShutdown(): Promise<void> {
    // Runs after the HTTP server has drained, so no request still needs the client.
    if (this.client.status === 'ready') {
      await this.client.quit().catch(() => this.client.disconnect());
    } else {
      this.client.disconnect();
    }
  }
}

@Global()
@Module({
  providers: [
    { provide: REDIS_CLIENT, inject: [ConfigService], useFactory: createRedisClient },
    RedisLifecycle,
  ],
  exports: [REDIS_CLIENT],
})
export class RedisModule {}
