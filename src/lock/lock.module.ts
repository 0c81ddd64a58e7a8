import { Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { LockBackend } from './lock-backend';
import { LOCK_BACKEND } from './lock.constants';
import { LockExplorer } from './lock.explorer';
import { LockMetrics } from './lock.metrics';
import {
  ConfigurableLockModule,
  LOCK_MODULE_OPTIONS,
  LockModuleOptions,
} from './lock.module-definition';
import { LockService } from './lock.service';
import { MemoryLockBackend } from './memory-lock.backend';
import { RedisLockBackend } from './redis-lock.backend';

const PREFIX = /^[A-Za-z0-9_:.-]{1,64}$/;

/** The backend the options name, explicitly: a configured but unreachable Redis never becomes memory. */
export function createLockBackend(options: LockModuleOptions): LockBackend {
  const prefix = options.prefix ?? 'lock:';
  if (!PREFIX.test(prefix)) {
    throw new Error('LockModule: prefix may hold only letters, digits and _ : . - (at most 64)');
  }
  switch (options.backend) {
    case 'redis':
      if (!options.redis) throw new Error('LockModule: the redis backend needs a `redis` client');
      return new RedisLockBackend(options.redis, `${prefix}__released`);
    case 'memory':
      return new MemoryLockBackend();
    default:
      throw new Error(`LockModule: unknown backend ${String(options.backend)}`);
  }
}

/**
 * Distributed locks with fencing tokens. `LockModule.forRoot({ backend: 'redis', redis })` or
 * `forRootAsync({ useFactory, inject })`; exports LockService and enables @WithLock.
 */
@Module({
  imports: [DiscoveryModule],
  providers: [
    { provide: LOCK_BACKEND, inject: [LOCK_MODULE_OPTIONS], useFactory: createLockBackend },
    LockMetrics,
    LockService,
    LockExplorer,
  ],
  exports: [LockService],
})
export class LockModule extends ConfigurableLockModule {}
