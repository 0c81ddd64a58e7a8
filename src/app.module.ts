import { DynamicModule, Module, Type } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { APP_FILTER, APP_PIPE } from '@nestjs/core';
import { AuthModule } from './auth/auth.module';
import { ProblemDetailsFilter } from './common/problem-details.filter';
import { createValidationPipe } from './common/validation';
import { AppConfigModule } from './config/app-config.module';
import { PG_POOL } from './database/database.constants';
import { DatabaseModule } from './database/database.module';
import { EmbeddingModule } from './embedding/embedding.module';
import { HealthModule } from './health/health.module';
import { LifecycleModule } from './lifecycle/lifecycle.module';
import { IdempotencyModule } from './idempotency';
import { LockModule } from './lock';
import { LoggingModule } from './logging/logging.module';
import { MetricsModule } from './metrics/metrics.module';
import { REDIS_CLIENT } from './redis/redis.constants';
import { OperationsModule } from './operations/operations.module';
import { RateLimitModule } from './rate-limit/rate-limit.module';
import { RedisModule } from './redis/redis.module';
import { VectorModule } from './vector/vector.module';
import { idempotencyOptionsFromConfig, lockOptionsFromConfig } from './coordination-options';

@Module({})
export class AppModule {
  /**
   * Built at run time rather than at import time, so configuration is validated when the app is
   * created (and each test can create an app from its own environment).
   */
  static forRoot(extraModules: Type[] = []): DynamicModule {
    return {
      module: AppModule,
      imports: [
        AppConfigModule.forRoot(),
        LifecycleModule,
        LoggingModule,
        AuthModule,
        MetricsModule,
        RedisModule,
        DatabaseModule,
        LockModule.forRootAsync({
          isGlobal: true,
          inject: [ConfigService, REDIS_CLIENT, PG_POOL],
          useFactory: lockOptionsFromConfig,
        }),
        IdempotencyModule.forRootAsync({
          isGlobal: true,
          inject: [ConfigService, REDIS_CLIENT],
          useFactory: idempotencyOptionsFromConfig,
        }),
        HealthModule,
        EmbeddingModule,
        RateLimitModule,
        VectorModule,
        OperationsModule,
        ...extraModules,
      ],
      providers: [
        // As providers (not app.useGlobal*) so tests built from this module behave like production.
        { provide: APP_PIPE, useFactory: createValidationPipe },
        { provide: APP_FILTER, useClass: ProblemDetailsFilter },
      ],
    };
  }
}
