import { Controller, Get, Header, UseGuards } from '@nestjs/common';
import { Registry } from 'prom-client';
import { Public } from '../auth/auth.decorators';
import { MetricsAuthGuard } from './metrics-auth.guard';

/** Prometheus scrape endpoint, at /metrics (outside the API prefix). */
@Controller()
export class MetricsController {
  constructor(private readonly registry: Registry) {}

  @Get('metrics')
  @Public()
  @UseGuards(MetricsAuthGuard)
  @Header('Content-Type', 'text/plain; version=0.0.4; charset=utf-8')
  metrics(): Promise<string> {
    return this.registry.metrics();
  }
}
