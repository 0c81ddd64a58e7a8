import { Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { IdempotencyStore } from './idempotency-store';
import { IdempotencyExplorer } from './idempotency.explorer';
import { IdempotencyHttpHooks } from './idempotency-http.hooks';
import { IdempotencyKeyInterceptor } from './idempotency-key.interceptor';
import { IdempotencyMetrics } from './idempotency.metrics';
import {
  ConfigurableIdempotencyModule,
  IDEMPOTENCY_MODULE_OPTIONS,
  IDEMPOTENCY_STORE,
  IdempotencyModuleOptions,
  maxResultBytesOf,
} from './idempotency.module-definition';
import { IdempotencyService } from './idempotency.service';
import { MemoryIdempotencyStore } from './memory-idempotency.store';
import { RedisIdempotencyStore } from './redis-idempotency.store';

/** The store the options name, explicitly: a configured but unreachable Redis never becomes memory. */
export function createIdempotencyStore(options: IdempotencyModuleOptions): IdempotencyStore {
  const prefix = options.prefix ?? 'idem:';
  maxResultBytesOf(options);
  if (!/^[A-Za-z0-9_:.-]{1,64}$/.test(prefix)) {
    throw new Error('IdempotencyModule: prefix may hold only letters, digits and _ : . -');
  }
  switch (options.backend) {
    case 'redis':
      if (!options.redis)
        throw new Error('IdempotencyModule: the redis backend needs a `redis` client');
      return new RedisIdempotencyStore(options.redis, `${prefix}__settled`);
    case 'memory':
      return new MemoryIdempotencyStore();
    default:
      throw new Error(`IdempotencyModule: unknown backend ${String(options.backend)}`);
  }
}

/**
 * Single-flight with cached results across replicas, `@Idempotent` for provider methods and the
 * HTTP `Idempotency-Key` interceptor (`@IdempotentRoute()`).
 */
@Module({
  imports: [DiscoveryModule],
  providers: [
    {
      provide: IDEMPOTENCY_STORE,
      inject: [IDEMPOTENCY_MODULE_OPTIONS],
      useFactory: createIdempotencyStore,
    },
    IdempotencyMetrics,
    IdempotencyService,
    IdempotencyExplorer,
    IdempotencyHttpHooks,
    IdempotencyKeyInterceptor,
  ],
  // The store, options and metrics too: @IdempotentRoute instantiates the interceptor in the
  // module of the controller that uses it.
  exports: [
    IdempotencyService,
    IdempotencyKeyInterceptor,
    IdempotencyMetrics,
    IDEMPOTENCY_STORE,
    IDEMPOTENCY_MODULE_OPTIONS,
  ],
})
export class IdempotencyModule extends ConfigurableIdempotencyModule {}
