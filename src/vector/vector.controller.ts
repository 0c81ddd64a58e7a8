import {
  Body,
  ConflictException,
  Controller,
  Delete,
  Get,
  HttpCode,
  Param,
  Post,
  Query,
} from '@nestjs/common';
import { ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import { RequireScope } from '../auth/auth.decorators';
import {
  ApiAuthenticated,
  ApiBadRequest,
  ApiConflict,
  ApiIdempotencyErrors,
  ApiNotFound,
} from '../common/api-docs';
import { IdempotentRoute } from '../idempotency';
import { BatchDeleteDto, BatchDeleteResponseDto, DropNamespaceResponseDto } from './dto/delete.dto';
import {
  BatchUpsertDto,
  CleanupDto,
  NamespaceDto,
  NamespaceParamDto,
  RebuildDto,
  SearchDto,
  StatisticsQueryDto,
} from './dto/vector.dto';
import {
  CleanupResponseDto,
  RebuildProgressDto,
  RebuildResponseDto,
  RollbackResponseDto,
  SearchResponseDto,
  StatisticsResponseDto,
  UpsertResponseDto,
} from './dto/responses.dto';
import { RebuildResult, RebuildService } from './rebuild.service';
import { StatisticsService } from './statistics.service';
import { unknownNamespace } from './vector.errors';
import { VectorService } from './vector.service';

/** The vector-management API under /api/v1/vector. */
@ApiTags('vectors')
@ApiAuthenticated()
@ApiBadRequest()
@Controller()
export class VectorController {
  constructor(
    private readonly vectors: VectorService,
    private readonly rebuilds: RebuildService,
    private readonly statisticsService: StatisticsService,
  ) {}

  @Post('batch-upsert')
  @ApiOperation({
    summary: 'Upsert items into a table of a namespace (lock: lock:vector:upsert:{table}:{ns})',
  })
  @ApiOkResponse({ type: UpsertResponseDto })
  @ApiConflict('The upsert lock was not acquired in time, or the write was fenced out')
  @ApiIdempotencyErrors()
  @RequireScope('write')
  @HttpCode(200)
  @IdempotentRoute()
  batchUpsert(@Body() dto: BatchUpsertDto) {
    return this.vectors.batchUpsert(dto);
  }

  @Post('batch-delete')
  @ApiOperation({
    summary:
      'Delete items of a table of a namespace by obj_ref (lock: lock:vector:upsert:{table}:{ns})',
  })
  @ApiOkResponse({ type: BatchDeleteResponseDto })
  @ApiNotFound()
  @ApiConflict('The upsert lock was not acquired in time, or the write was fenced out')
  @ApiIdempotencyErrors()
  @RequireScope('write')
  @HttpCode(200)
  @IdempotentRoute()
  batchDelete(@Body() dto: BatchDeleteDto) {
    return this.vectors.batchDelete(dto);
  }

  @Delete('namespaces/:namespace')
  @ApiOperation({
    summary: 'Drop a namespace with all its slots (admin; lock: lock:vector:rebuild:{ns})',
  })
  @ApiOkResponse({ type: DropNamespaceResponseDto })
  @ApiNotFound()
  @ApiConflict('The rebuild lock is held, or a slot is in use')
  @ApiIdempotencyErrors()
  @RequireScope('admin')
  @IdempotentRoute()
  dropNamespace(@Param() params: NamespaceParamDto) {
    return this.rebuilds.dropNamespace(params.namespace);
  }

  /**
   * Runs once per namespace across replicas. A caller that arrives while another replica is
   * rebuilding waits up to DEFAULT_IDEM_WAIT_TIMEOUT_MS for its result, then gets 409 with
   * Retry-After and where to follow progress.
   */
  @Post('rebuild-index')
  @ApiOperation({
    summary: 'Re-embed a namespace into a new slot and switch to it, once across replicas',
  })
  @ApiOkResponse({ type: RebuildResponseDto })
  @ApiNotFound()
  @ApiConflict('A rebuild is still running on another replica (Retry-After, progress_url)')
  @ApiIdempotencyErrors()
  @RequireScope('write')
  @HttpCode(200)
  @IdempotentRoute()
  async rebuildIndex(@Body() dto: RebuildDto): Promise<RebuildResult> {
    const outcome = await this.rebuilds.rebuildIndex(dto.namespace, dto.force);
    if (outcome.status === 'done') return outcome.result;
    throw new ConflictException({
      message: `A rebuild of ${dto.namespace} is still running; its result will be replayed when it finishes.`,
      retry_after_seconds: 5,
      rebuild_status: 'in_progress',
      progress_url: `/api/v1/vector/rebuilds/${dto.namespace}`,
    });
  }

  @Post('admin/rebuild-index-manual')
  @ApiOperation({ summary: 'Rebuild holding lock:vector:rebuild:{ns} explicitly (admin)' })
  @ApiOkResponse({ type: RebuildResponseDto })
  @ApiNotFound()
  @ApiConflict('The rebuild lock is held')
  @ApiIdempotencyErrors()
  @RequireScope('admin')
  @HttpCode(200)
  @IdempotentRoute()
  rebuildIndexManual(@Body() dto: NamespaceDto): Promise<RebuildResult> {
    return this.rebuilds.rebuildHoldingLock(dto.namespace);
  }

  @Get('rebuilds/:namespace')
  @ApiOperation({ summary: 'Progress of the latest rebuild of a namespace' })
  @ApiOkResponse({ type: RebuildProgressDto })
  @ApiNotFound('No rebuild of this namespace')
  async rebuildProgress(@Param() params: NamespaceParamDto) {
    const progress = await this.rebuilds.progress(params.namespace);
    if (!progress) throw unknownNamespace(params.namespace);
    return { success: true, ...progress };
  }

  @Post('cleanup-slots')
  @ApiOperation({ summary: 'Drop slots that are neither active nor building (admin)' })
  @ApiOkResponse({ type: CleanupResponseDto })
  @ApiNotFound()
  @ApiConflict('The rebuild lock is held')
  @ApiIdempotencyErrors()
  @RequireScope('admin')
  @HttpCode(200)
  @IdempotentRoute()
  cleanupSlots(@Body() dto: CleanupDto) {
    return this.rebuilds.cleanup(dto.namespace, dto.keep_previous);
  }

  @Post('rollback')
  @ApiOperation({ summary: 'Re-activate the previous slot, carrying over later upserts (admin)' })
  @ApiOkResponse({ type: RollbackResponseDto })
  @ApiNotFound()
  @ApiConflict('No previous slot, another model, or the rebuild lock is held')
  @ApiIdempotencyErrors()
  @RequireScope('admin')
  @HttpCode(200)
  @IdempotentRoute()
  rollback(@Body() dto: NamespaceDto) {
    return this.rebuilds.rollback(dto.namespace);
  }

  /** Keyset pagination in namespace order: follow `next_cursor` until it is null. */
  @Get('statistics')
  @ApiOperation({
    summary:
      'Rows, status, sizes and index state per namespace, table and slot, a page of namespaces at a time',
  })
  @ApiOkResponse({ type: StatisticsResponseDto })
  @ApiNotFound()
  @RequireScope('read')
  statistics(@Query() query: StatisticsQueryDto) {
    return this.statisticsService.page(query);
  }

  @Post('search')
  @ApiOperation({ summary: 'k nearest items by query text or vector in the active slot' })
  @ApiOkResponse({ type: SearchResponseDto })
  @ApiNotFound()
  @ApiConflict('The namespace was indexed with another embedding model')
  @HttpCode(200)
  search(@Body() dto: SearchDto) {
    return this.vectors.search(dto);
  }
}
