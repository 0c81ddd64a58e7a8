import { Global, Module } from '@nestjs/common';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { InfraMetrics } from './infra-metrics';
import { MetricsAuthGuard } from './metrics-auth.guard';
import { MetricsController } from './metrics.controller';

/**
 * One Prometheus registry per application (not prom-client's global one), so several apps in one
 * process — tests, mostly — never clash over metric names.
 */
@Global()
@Module({
  providers: [
    MetricsAuthGuard,
    InfraMetrics,
    {
      provide: Registry,
      useFactory: () => {
        const registry = new Registry();
        collectDefaultMetrics({ register: registry });
        return registry;
      },
    },
  ],
  controllers: [MetricsController],
  exports: [Registry],
})
export class MetricsModule {}
