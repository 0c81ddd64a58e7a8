import {
  Controller,
  Get,
  Headers,
  HttpCode,
  NotFoundException,
  Param,
  Post,
  Query,
  Req,
  UnsupportedMediaTypeException,
} from '@nestjs/common';
import {
  ApiBody,
  ApiConsumes,
  ApiHeader,
  ApiOkResponse,
  ApiOperation,
  ApiResponse,
  ApiTags,
} from '@nestjs/swagger';
import { isUUID } from 'class-validator';
import type { FastifyRequest } from 'fastify';
import { RequireScope } from '../../auth/auth.decorators';
import {
  ApiAuthenticated,
  ApiBadRequest,
  ApiConflict,
  ApiIdempotencyErrors,
  ApiNotFound,
  ProblemDetailsDto,
} from '../../common/api-docs';
import { invalidRequest } from '../../common/validation';
import { IdempotentRoute } from '../../idempotency';
import {
  ImportIdParamDto,
  ImportProgressDto,
  ImportQueryDto,
  ImportResponseDto,
  ImportsQueryDto,
} from '../dto/import.dto';
import { ImportResult, ImportService } from './import.service';
import { NDJSON_CONTENT_TYPE, NdjsonBody } from './ndjson-body';

/** Streamed NDJSON imports and their progress, under /api/v1/vector. */
@ApiTags('vectors')
@ApiAuthenticated()
@ApiBadRequest()
@Controller()
export class ImportController {
  constructor(private readonly imports: ImportService) {}

  @Post('import')
  @ApiOperation({
    summary: 'Stream items into a table of a namespace, all or nothing (scope: write)',
    description:
      'The body is NDJSON (Content-Type: application/x-ndjson), one batch-upsert item a line, ' +
      'streamed (BODY_LIMIT_BYTES does not apply; IMPORT_MAX_LINES does). Each obj_ref at most ' +
      'once. A bad line fails the import with its number (problem member `line`) and nothing ' +
      'is written. The answer comes when the import has finished; its progress meanwhile at ' +
      'GET /imports/{id} (send X-Import-Id to choose the id) or GET /imports?namespace=.',
  })
  @ApiConsumes(NDJSON_CONTENT_TYPE)
  @ApiBody({
    schema: {
      type: 'string',
      example: '{"obj_ref":"q-1","content":"How do I reset my password?"}\n',
    },
  })
  @ApiHeader({
    // As the handler reads it (@Headers), so the two describe one parameter.
    name: 'x-import-id',
    required: false,
    description: 'A UUID the client chooses for this import, to follow its progress meanwhile',
  })
  @ApiOkResponse({ type: ImportResponseDto })
  @ApiConflict(
    'The upsert lock was not acquired in time, the write was fenced out, or the id is taken',
  )
  @ApiResponse({
    status: 413,
    description: 'More than IMPORT_MAX_LINES lines',
    type: ProblemDetailsDto,
  })
  @ApiResponse({ status: 415, description: 'Not application/x-ndjson', type: ProblemDetailsDto })
  @ApiIdempotencyErrors()
  @RequireScope('write')
  @HttpCode(200)
  @IdempotentRoute()
  importItems(
    @Query() query: ImportQueryDto,
    @Req() request: FastifyRequest,
    @Headers('x-import-id') importId?: string,
  ): Promise<ImportResult> {
    const body = request.body;
    if (!(body instanceof NdjsonBody)) {
      throw new UnsupportedMediaTypeException(`Send the items as ${NDJSON_CONTENT_TYPE}.`);
    }
    if (importId !== undefined && !isUUID(importId)) {
      body.stream.resume();
      throw invalidRequest([{ field: 'X-Import-Id', message: 'must be a UUID' }]);
    }
    return this.imports.import(query.table_name, query.namespace, body.stream, importId);
  }

  @Get('imports/:id')
  @ApiOperation({ summary: 'Progress of an import (scope: read)' })
  @ApiOkResponse({ type: ImportProgressDto })
  @ApiNotFound('No import with this id')
  async importProgress(@Param() params: ImportIdParamDto) {
    const progress = await this.imports.progress(params.id);
    if (!progress) throw new NotFoundException(`No import with id ${params.id}.`);
    return { success: true, ...progress };
  }

  @Get('imports')
  @ApiOperation({ summary: 'Progress of the latest import into a namespace (scope: read)' })
  @ApiOkResponse({ type: ImportProgressDto })
  @ApiNotFound('No import into this namespace')
  async latestImport(@Query() query: ImportsQueryDto) {
    const progress = await this.imports.latest(query.namespace);
    if (!progress) throw new NotFoundException(`No import into ${query.namespace}.`);
    return { success: true, ...progress };
  }
}
