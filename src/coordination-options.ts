import { ConfigService } from '@nestjs/config';
import type { Pool } from 'pg';
import { Env } from './config/env.schema';
import { IdempotencyModuleOptions } from './idempotency';
import { LockModuleOptions, PostgresFencing } from './lock';
import type { RedisConnection } from './redis/redis.constants';

/**
 * The service's LockModule options from its configuration. A force-release also raises the fence
 * recorded in Postgres, so the evicted holder's next fenced write fails even before a new holder
 * has written.
 */
export function lockOptionsFromConfig(
  config: ConfigService<Env, true>,
  redis: RedisConnection,
  pool: Pool,
): LockModuleOptions {
  const fencing = new PostgresFencing();
  return {
    backend: config.get('LOCK_BACKEND', { infer: true }),
    redis,
    prefix: config.get('LOCK_PREFIX', { infer: true }),
    defaultTtlMs: config.get('DEFAULT_LOCK_TTL_MS', { infer: true }),
    defaultWaitTimeoutMs: config.get('DEFAULT_WAIT_TIMEOUT_MS', { infer: true }),
    backoffMs: config.get('DEFAULT_BACKOFF_MS', { infer: true }),
    maxBackoffMs: config.get('LOCK_MAX_BACKOFF_MS', { infer: true }),
    fairStaleMs: config.get('LOCK_FAIR_STALE_MS', { infer: true }),
    onForceRelease: ({ key, fence }) => fencing.advance(pool, { key, fence }),
  };
}

/** The service's IdempotencyModule options: the seed's DEFAULT_* variables as defaults. */
export function idempotencyOptionsFromConfig(
  config: ConfigService<Env, true>,
  redis: RedisConnection,
): IdempotencyModuleOptions {
  return {
    backend: config.get('IDEMPOTENCY_BACKEND', { infer: true }),
    redis,
    maxResultBytes: config.get('IDEMPOTENCY_MAX_RESULT_BYTES', { infer: true }),
    defaults: {
      ttl_seconds: config.get('DEFAULT_IDEM_TTL_SECONDS', { infer: true }),
      in_progress_ttl: config.get('DEFAULT_IN_PROGRESS_TTL', { infer: true }),
      wait_timeout_ms: config.get('DEFAULT_IDEM_WAIT_TIMEOUT_MS', { infer: true }),
      poll_interval_ms: config.get('DEFAULT_POLL_INTERVAL_MS', { infer: true }),
    },
  };
}
