import { Controller, Get } from '@nestjs/common';
import { HealthCheck, HealthCheckResult, HealthCheckService } from '@nestjs/terminus';
import { ApiTags } from '@nestjs/swagger';
import { Public } from '../auth/auth.decorators';
import { DependencyIndicators } from './indicators';

/** Open to probes: Kubernetes sends no credentials. */
@ApiTags('health')
@Public()
@Controller('health')
export class HealthController {
  private readonly startedAt = Date.now();

  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: DependencyIndicators,
  ) {}

  /** Full check of every dependency; 503 with details when any is down. */
  @Get()
  @HealthCheck()
  check(): Promise<HealthCheckResult> {
    return this.health.check([
      () => this.indicators.redisPing(),
      () => this.indicators.postgresAndPgvector(),
      () => this.indicators.lockRoundTrip(),
    ]);
  }

  /**
   * Liveness: the process answers. Deliberately independent of Redis and Postgres — failing it
   * during a dependency outage would make Kubernetes restart every pod at once.
   */
  @Get('live')
  live(): HealthCheckResult {
    const uptimeSeconds = Math.round((Date.now() - this.startedAt) / 1000);
    return {
      status: 'ok',
      info: { process: { status: 'up', uptime_s: uptimeSeconds, pid: process.pid } },
      error: {},
      details: { process: { status: 'up', uptime_s: uptimeSeconds, pid: process.pid } },
    };
  }

  /** Readiness: route traffic here only while dependencies answer and no shutdown has begun. */
  @Get('ready')
  @HealthCheck()
  ready(): Promise<HealthCheckResult> {
    return this.health.check([
      () => this.indicators.accepting(),
      () => this.indicators.redisPing(),
      () => this.indicators.postgresPing(),
    ]);
  }
}
