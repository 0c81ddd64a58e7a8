import { Module } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { APP_GUARD, Reflector } from '@nestjs/core';
import { ThrottlerModule } from '@nestjs/throttler';
import { ThrottlerStorageRedisService } from '@nest-lab/throttler-storage-redis';
import type { Cluster, Redis } from 'ioredis';
import { Env } from '../config/env.schema';
import { REDIS_CLIENT } from '../redis/redis.constants';
import { RateLimitGuard, limitedScope } from './rate-limit.guard';

const reflector = new Reflector();

/** Write and admin routes, per API key, per minute: RATE_LIMIT_WRITE_PER_MINUTE / _ADMIN_. */
@Module({
  imports: [
    ThrottlerModule.forRootAsync({
      inject: [ConfigService, REDIS_CLIENT],
      useFactory: (config: ConfigService<Env, true>, redis: Redis | Cluster) => ({
        throttlers: [
          {
            name: 'default',
            ttl: 60_000,
            limit: (context) =>
              limitedScope(context, reflector) === 'admin'
                ? config.get('RATE_LIMIT_ADMIN_PER_MINUTE', { infer: true })
                : config.get('RATE_LIMIT_WRITE_PER_MINUTE', { infer: true }),
          },
        ],
        // Scope in the key: write and admin budgets of one key are counted apart.
        generateKey: (context, tracker) =>
          `ratelimit:${limitedScope(context, reflector) ?? 'none'}:${tracker}`,
        storage: new ThrottlerStorageRedisService(redis as Redis),
      }),
    }),
  ],
  providers: [{ provide: APP_GUARD, useClass: RateLimitGuard }],
})
export class RateLimitModule {}
