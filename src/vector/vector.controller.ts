import {
  Body,
  ConflictException,
  Controller,
  Get,
  HttpCode,
  Param,
  Post,
  Query,
} from '@nestjs/common';
import { RequireScope } from '../auth/auth.decorators';
import { IdempotentRoute } from '../idempotency';
import {
  BatchUpsertDto,
  CleanupDto,
  NamespaceDto,
  NamespaceParamDto,
  RebuildDto,
  SearchDto,
  StatisticsQueryDto,
} from './dto/vector.dto';
import { RebuildOutcome, RebuildResult, RebuildService } from './rebuild.service';
import { unknownNamespace } from './vector.errors';
import { VectorService } from './vector.service';

/** The vector-management API under /api/v1/vector. */
@Controller()
export class VectorController {
  constructor(
    private readonly vectors: VectorService,
    private readonly rebuilds: RebuildService,
  ) {}

  @Post('batch-upsert')
  @RequireScope('write')
  @HttpCode(200)
  @IdempotentRoute()
  batchUpsert(@Body() dto: BatchUpsertDto) {
    return this.vectors.batchUpsert(dto);
  }

  /**
   * Runs once per namespace across replicas. A caller that arrives while another replica is
   * rebuilding waits up to DEFAULT_IDEM_WAIT_TIMEOUT_MS for its result, then gets 409 with
   * Retry-After and where to follow progress.
   */
  @Post('rebuild-index')
  @RequireScope('write')
  @HttpCode(200)
  @IdempotentRoute()
  async rebuildIndex(@Body() dto: RebuildDto): Promise<RebuildResult> {
    const outcome = (await this.rebuilds.rebuildOnce(dto.namespace, dto.force)) as RebuildOutcome;
    if (outcome.status === 'done') return outcome.result;
    throw new ConflictException({
      message: `A rebuild of ${dto.namespace} is still running; its result will be replayed when it finishes.`,
      retry_after_seconds: 5,
      rebuild_status: 'in_progress',
      progress_url: `/api/v1/vector/rebuilds/${dto.namespace}`,
    });
  }

  @Post('admin/rebuild-index-manual')
  @RequireScope('admin')
  @HttpCode(200)
  @IdempotentRoute()
  rebuildIndexManual(@Body() dto: NamespaceDto): Promise<RebuildResult> {
    return this.rebuilds.rebuildHoldingLock(dto.namespace);
  }

  @Get('rebuilds/:namespace')
  async rebuildProgress(@Param() params: NamespaceParamDto) {
    const progress = await this.rebuilds.progress(params.namespace);
    if (!progress) throw unknownNamespace(params.namespace);
    return { success: true, ...progress };
  }

  @Post('cleanup-slots')
  @RequireScope('admin')
  @HttpCode(200)
  @IdempotentRoute()
  cleanupSlots(@Body() dto: CleanupDto) {
    return this.rebuilds.cleanup(dto.namespace, dto.keep_previous);
  }

  @Post('rollback')
  @RequireScope('admin')
  @HttpCode(200)
  @IdempotentRoute()
  rollback(@Body() dto: NamespaceDto) {
    return this.rebuilds.rollback(dto.namespace);
  }

  @Get('statistics')
  statistics(@Query() query: StatisticsQueryDto) {
    return this.vectors.statistics(query);
  }

  @Post('search')
  @HttpCode(200)
  search(@Body() dto: SearchDto) {
    return this.vectors.search(dto);
  }
}
