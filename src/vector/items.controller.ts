import {
  Body,
  Controller,
  Get,
  Headers,
  HttpCode,
  Post,
  Query,
  Res,
  StreamableFile,
} from '@nestjs/common';
import {
  ApiExtension,
  ApiExtraModels,
  ApiOkResponse,
  ApiOperation,
  ApiProduces,
  ApiTags,
  getSchemaPath,
} from '@nestjs/swagger';
import type { FastifyReply } from 'fastify';
import { RequireScope } from '../auth/auth.decorators';
import { ApiAuthenticated, ApiBadRequest, ApiNotFound } from '../common/api-docs';
import {
  ExportItemsQueryDto,
  ExportPageResponseDto,
  FetchItemsDto,
  FetchItemsResponseDto,
  StoredItemDto,
} from './dto/items.dto';
import { ItemsService } from './items.service';

export const NDJSON = 'application/x-ndjson';

/** True when the Accept header lists NDJSON (with a non-zero q, if any). */
export function acceptsNdjson(accept: string | undefined): boolean {
  if (!accept) return false;
  return accept.split(',').some((range) => {
    const [type, ...params] = range.split(';').map((part) => part.trim().toLowerCase());
    const q = params.find((param) => param.startsWith('q='));
    return type === NDJSON && (q === undefined || Number(q.slice(2)) > 0);
  });
}

/** Reads of stored items: fetch by obj_ref and export of a namespace's active slot. */
@ApiTags('vectors')
@ApiAuthenticated()
@ApiBadRequest()
@Controller()
export class ItemsController {
  constructor(private readonly items: ItemsService) {}

  @Post('items/get')
  @ApiOperation({
    summary: 'Stored items by obj_ref from the active slot (scope: read)',
    description:
      'Up to 1000 distinct obj_refs; those with no item are listed in not_found. Embeddings only with include_embeddings: true.',
  })
  @ApiExtension('x-required-scope', 'read')
  @ApiOkResponse({ type: FetchItemsResponseDto })
  @ApiNotFound()
  @RequireScope('read')
  @HttpCode(200)
  fetch(@Body() dto: FetchItemsDto) {
    return this.items.fetch(dto);
  }

  @Get('items')
  @ApiOperation({
    summary: 'Export the active slot: keyset pages, or an NDJSON stream (scope: read)',
    description:
      'JSON (default): a page of `limit` items in obj_ref order and the `next_cursor` to pass for the next page (null at the end). ' +
      '`Accept: application/x-ndjson`: every item, one JSON object per line, streamed with back-pressure (cursor and limit do not apply). ' +
      'Items present for the whole export appear exactly once, items upserted during it at most once; across a slot switch the export continues in the new slot after the same obj_ref. ' +
      'A stream that fails after its first line is cut off without its final chunk: only a cleanly ended stream is complete.',
  })
  @ApiExtension('x-required-scope', 'read')
  @ApiExtraModels(ExportPageResponseDto, StoredItemDto)
  @ApiProduces('application/json', NDJSON)
  @ApiOkResponse({
    description: 'A page (application/json) or the whole slot, one item per line (NDJSON)',
    content: {
      'application/json': { schema: { $ref: getSchemaPath(ExportPageResponseDto) } },
      // The body as a whole is text: one StoredItemDto per line (OpenAPI 3.0 has no way to
      // describe a sequence of JSON values; validators would take it for one object).
      [NDJSON]: {
        schema: {
          type: 'string',
          description: 'One StoredItemDto (see components) per line, each line JSON',
          example: '{"obj_ref":"q1","id":"1","content":"What is 2+2?","metadata":null}\n',
        },
      },
    },
  })
  @ApiNotFound()
  @RequireScope('read')
  async export(
    @Query() query: ExportItemsQueryDto,
    @Headers('accept') accept: string | undefined,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    void reply.header('vary', 'Accept');
    if (!acceptsNdjson(accept)) return this.items.exportPage(query);
    return new StreamableFile(await this.items.exportStream(query), { type: NDJSON });
  }
}
