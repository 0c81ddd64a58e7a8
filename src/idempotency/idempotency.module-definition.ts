import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { Cluster, Redis } from 'ioredis';

export interface IdempotencyModuleOptions {
  /** `redis` for single-flight across processes; `memory` for one process only. Explicit. */
  backend: 'redis' | 'memory';
  /** Required with the redis backend. */
  redis?: Redis | Cluster;
  /** Every idempotency key must start with this (default `idem:`). */
  prefix?: string;
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
