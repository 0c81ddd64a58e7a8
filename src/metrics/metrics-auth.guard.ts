import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { FastifyRequest } from 'fastify';
import { ApiKeyAuth } from '../auth/api-key-auth.service';
import { Env } from '../config/env.schema';

/** /metrics is open to scrapers unless METRICS_REQUIRE_AUTH asks for a read key. */
@Injectable()
export class MetricsAuthGuard implements CanActivate {
  private readonly required: boolean;

  constructor(
    private readonly auth: ApiKeyAuth,
    config: ConfigService<Env, true>,
  ) {
    this.required = config.get('METRICS_REQUIRE_AUTH', { infer: true });
  }

  canActivate(context: ExecutionContext): boolean {
    if (this.required) {
      this.auth.authorize(context.switchToHttp().getRequest<FastifyRequest>(), 'read');
    }
    return true;
  }
}
