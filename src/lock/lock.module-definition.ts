import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { RedisConnection } from './redis-lock.backend';
import type { ForceReleaseResult } from './lock.types';

export interface LockModuleOptions {
  /** `redis` for exclusion across processes; `memory` for a single process only. Explicit. */
  backend: 'redis' | 'memory';
  /** Required with the redis backend: a standalone, Sentinel or Cluster client. */
  redis?: RedisConnection;
  /** Every lock key must start with this; force-release refuses anything else (default `lock:`). */
  prefix?: string;
  defaultTtlMs?: number;
  defaultWaitTimeoutMs?: number;
  /** First retry delay; doubles per attempt up to maxBackoffMs, with full jitter. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Fair mode: a waiter not seen for this long is skipped (default 2000 ms). */
  fairStaleMs?: number;
  /** Shown as the holder's instance in status() (default: hostname-pid-random). */
  instanceId?: string;
  /**
   * Called after a force-release removed a lock, with the bumped fence: the place to record it
   * where fenced writes are checked (see PostgresFencing.advance), so the old holder's later
   * writes fail even if no new holder has written yet.
   */
  onForceRelease?: (result: ForceReleaseResult) => Promise<void>;
}

export const {
  ConfigurableModuleClass: ConfigurableLockModule,
  MODULE_OPTIONS_TOKEN: LOCK_MODULE_OPTIONS,
  OPTIONS_TYPE: LOCK_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: LOCK_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<LockModuleOptions>()
  .setClassMethodName('forRoot')
  .setExtras({ isGlobal: false }, (definition, extras) => ({
    ...definition,
    global: extras.isGlobal,
  }))
  .build();
