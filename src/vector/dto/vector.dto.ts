import { ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import {
  ArrayMaxSize,
  ArrayMinSize,
  IsArray,
  IsBoolean,
  IsInt,
  IsNotEmpty,
  IsObject,
  IsOptional,
  IsString,
  Length,
  Matches,
  Max,
  MaxLength,
  Min,
  ValidateNested,
} from 'class-validator';
import { IsVector } from '../../common/vector-validation';

export const NAMESPACE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const NAMESPACE_MESSAGE =
  'namespace must be 1-64 characters: lower-case letters, digits, _ or -, starting with a letter or digit';
export const TABLE = /^[a-z][a-z0-9_]{0,39}$/;
export const TABLE_MESSAGE = 'table_name must be a registered table name';

/** Hard ceilings; the configured limits (UPSERT_MAX_ITEMS, CONTENT_MAX_BYTES …) are checked in the service. */
const MAX_ITEMS = 10_000;
const MAX_DIMENSION = 16_000;

export class UpsertItemDto {
  @IsString()
  @Length(1, 256)
  obj_ref!: string;

  @IsString()
  @IsNotEmpty()
  @MaxLength(1_048_576)
  content!: string;

  @IsOptional()
  @IsString()
  @Length(1, 256)
  id?: string;

  @IsOptional()
  @IsObject()
  metadata?: Record<string, unknown>;

  @IsOptional()
  @IsVector(MAX_DIMENSION)
  embedding?: number[];
}

export class BatchUpsertDto {
  @IsArray()
  @ArrayMinSize(1)
  @ArrayMaxSize(MAX_ITEMS)
  @ValidateNested({ each: true })
  @Type(() => UpsertItemDto)
  items!: UpsertItemDto[];

  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name!: string;

  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace: string = 'default';
}

export class NamespaceDto {
  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace: string = 'default';
}

export class RebuildDto extends NamespaceDto {
  @IsOptional()
  @IsBoolean()
  force: boolean = false;
}

export class CleanupDto extends NamespaceDto {
  /** Keep the slot that was active before the current one, for rollback (default true). */
  @IsOptional()
  @IsBoolean()
  keep_previous: boolean = true;
}

export class SearchDto {
  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name!: string;

  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace: string = 'default';

  @IsOptional()
  @IsString()
  @IsNotEmpty()
  @MaxLength(32_768)
  query?: string;

  @IsOptional()
  @IsVector(MAX_DIMENSION)
  vector?: number[];

  /**
   * Search with the stored embedding of this item of the table ("more like this"); the item
   * itself is left out of the results. Send exactly one of query, vector or obj_ref.
   */
  @IsOptional()
  @IsString()
  @Length(1, 256)
  obj_ref?: string;

  @ApiPropertyOptional({
    type: 'object',
    additionalProperties: true,
    description:
      'Only items whose metadata matches: a subset of MongoDB query syntax. `{"field": value}` ' +
      '(equality), `{"field": {"$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte": value}}`, ' +
      '`{"field": {"$in": [values]}}` (up to 256), `{"field": {"$exists": true | false}}`, ' +
      '`{"$and": [filters]}`, `{"$or": [filters]}` (nested up to 4 levels); several keys in one ' +
      'object must all hold; at most 64 conditions. Field names: 1-4 dot-separated segments ' +
      'of `[A-Za-z_][A-Za-z0-9_]{0,63}` (`author.name` reads nested objects). Values: strings ' +
      '(up to 1024 characters), finite numbers, booleans, null, compared as JSON ("10" is not ' +
      '10; an array field does not equal one of its elements). Ranges compare numbers with ' +
      'numbers and strings with strings; items whose field has another type do not match. ' +
      '`$ne` also matches items without the field. Anything else is a 400 naming the path.',
    example: { $and: [{ category: 'books' }, { price: { $gte: 10, $lt: 20 } }] },
  })
  @IsOptional()
  @IsObject()
  filter?: Record<string, unknown>;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(1000)
  k: number = 10;
}

export class StatisticsQueryDto {
  /** Only this namespace (404 if it does not exist). */
  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace?: string;

  /** Only this registered table. */
  @IsOptional()
  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name?: string;

  /** Namespaces per page, in name order (default 100). */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(1000)
  limit?: number;

  /** `next_cursor` of the previous page; omit for the first. */
  @IsOptional()
  @IsString()
  @Length(1, 512)
  cursor?: string;
}

export class NamespaceParamDto {
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace!: string;
}
