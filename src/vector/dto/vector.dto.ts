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

const NAMESPACE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const NAMESPACE_MESSAGE =
  'namespace must be 1-64 characters: lower-case letters, digits, _ or -, starting with a letter or digit';
const TABLE = /^[a-z][a-z0-9_]{0,39}$/;
const TABLE_MESSAGE = 'table_name must be a registered table name';

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
