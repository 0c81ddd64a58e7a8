import { once } from 'node:events';
import {
  Global,
  Inject,
  Logger,
  Module,
  OnApplicationShutdown,
  OnModuleInit,
} from '@nestjs/common';
import Redis, { Cluster, RedisOptions } from 'ioredis';
import { AppConfigService } from '../config/app-config.module';
import { Env } from '../config/env.schema';
import { ConfigService } from '@nestjs/config';
import { REDIS_CLIENT, RedisConnection } from './redis.constants';
import { redisUrlOptions } from './redis-url';

const logger = new Logger('Redis');
const KEEPALIVE_MS = 10_000;

/**
 * The application's Redis client for the configured topology: standalone (REDIS_URL), Sentinel
 * (REDIS_SENTINELS + REDIS_SENTINEL_NAME) or Cluster (REDIS_CLUSTER_NODES, else REDIS_URL's node).
 */
function createRedisClient(config: AppConfigService): RedisConnection {
  const mode = config.get('REDIS_MODE', { infer: true });
  // The URL's parts as explicit options, so that REDIS_PASSWORD and REDIS_DB really override it.
  const { host, port, username, password, db, tls } = redisUrlOptions(
    config.get('REDIS_URL', { infer: true }),
  );
  const options: RedisOptions = {
    username,
    password: config.get('REDIS_PASSWORD', { infer: true }) ?? password,
    tls,
    connectionName: 'vector-service',
    // Connect in onModuleInit, once every provider exists: a start-up that fails earlier (say,
    // on migrations) then leaves no socket or reconnect timer behind.
    lazyConnect: true,
    connectTimeout: config.get('REDIS_CONNECT_TIMEOUT_MS', { infer: true }),
    // Fail fast while disconnected instead of queueing: callers (locks, health) must see the
    // outage at once and answer 503 rather than hang or act on stale assumptions.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    // A server that stops answering keeps its connection open (stopped, stuck, frozen VM):
    // without this every command would wait for it. It also bounds the ready check after a
    // reconnection. A timed-out command stays queued, so later replies still match up; the
    // server may still run it once it answers again, as with a reply lost to a disconnection.
    commandTimeout: config.get('REDIS_COMMAND_TIMEOUT_MS', { infer: true }),
    // Probe idle connections (subscribers above all) so a peer that vanished without closing
    // the connection is noticed by the OS rather than after hours.
    keepAlive: KEEPALIVE_MS,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2_000),
  };
  let client: RedisConnection;
  if (mode === 'cluster') {
    const nodes = config.get('REDIS_CLUSTER_NODES', { infer: true }) ?? [{ host, port }];
    client = new Cluster(nodes, {
      lazyConnect: true,
      enableOfflineQueue: false,
      clusterRetryStrategy: (attempt) => Math.min(attempt * 100, 2_000),
      redisOptions: options,
    });
  } else if (mode === 'sentinel') {
    client = new Redis({
      ...options,
      sentinels: config.get('REDIS_SENTINELS', { infer: true }),
      name: config.get('REDIS_SENTINEL_NAME', { infer: true }),
      // Listen for the Sentinels' +switch-master and reconnect to the new master at once. A
      // master that froze (partition, paused VM) keeps its connections open: commands only
      // time out, which never makes the client reconnect, and it would stay on the old
      // master for as long as that one stays frozen.
      failoverDetector: true,
      db: config.get('REDIS_DB', { infer: true }) ?? db,
    });
  } else {
    client = new Redis({
      ...options,
      host,
      port,
      db: config.get('REDIS_DB', { infer: true }) ?? db,
    });
  }
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
    @Inject(REDIS_CLIENT) private readonly client: RedisConnection,
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
