import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { Cluster, Redis } from 'ioredis';

export interface IdempotencyModuleOptions {
  /** `redis` for single-flight across processes; `memory` for one process only. Explicit. */
  backend: 'redis' | 'memory';
  /** Required with the redis backend. */
  redis?: Redis | Cluster;
  /** Every idempotency key must start with this (default `idem:`). */
  prefix?: string;
  /**
   * Largest outcome stored per key, in bytes of JSON (default 1 MiB): a @Idempotent result or an
   * HTTP response larger than this is answered to its own caller but not stored, and the key is
   * released (so a waiting caller or a retry runs again), with a warning.
   */
  maxResultBytes?: number;
  /** Defaults for IdempotencyConfig fields a call leaves out (the seed's values otherwise). */
  defaults?: {
    ttl_seconds?: number;
    in_progress_ttl?: number;
    wait_timeout_ms?: number;
    poll_interval_ms?: number;
  };
}

export const {
  ConfigurableModuleClass: ConfigurableIdempotencyModule,
  MODULE_OPTIONS_TOKEN: IDEMPOTENCY_MODULE_OPTIONS,
} = new ConfigurableModuleBuilder<IdempotencyModuleOptions>()
  .setClassMethodName('forRoot')
  .setExtras({ isGlobal: false }, (definition, extras) => ({
    ...definition,
    global: extras.isGlobal,
  }))
  .build();

/** Injection token of the IdempotencyStore the module was configured with. */
export const IDEMPOTENCY_STORE = Symbol('IDEMPOTENCY_STORE');

export const DEFAULT_MAX_RESULT_BYTES = 1024 * 1024;

/** The module's cap on stored outcomes; throws at start-up on a value that is not a size. */
export function maxResultBytesOf(options: IdempotencyModuleOptions): number {
  const value = options.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES;
  if (!(Number.isSafeInteger(value) && value > 0)) {
    throw new Error('IdempotencyModule: maxResultBytes must be a positive whole number of bytes');
  }
  return value;
}
