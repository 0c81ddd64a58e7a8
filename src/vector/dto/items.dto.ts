import { Transform, Type } from 'class-transformer';
import {
  ArrayMaxSize,
  ArrayMinSize,
  IsArray,
  IsBoolean,
  IsInt,
  IsOptional,
  IsString,
  Length,
  Matches,
  Max,
  MaxLength,
  Min,
} from 'class-validator';
import { NAMESPACE, NAMESPACE_MESSAGE, TABLE, TABLE_MESSAGE } from './vector.dto';

/** obj_refs per fetch. */
export const FETCH_MAX_REFS = 1000;
/** Items per export page: default and ceiling. */
export const EXPORT_DEFAULT_LIMIT = 100;
export const EXPORT_MAX_LIMIT = 1000;

/** Query strings carry text: `true` and `false` become booleans, anything else fails validation. */
const queryBoolean = ({ value }: { value: unknown }) =>
  value === 'true' ? true : value === 'false' ? false : value;

export class FetchItemsDto {
  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name!: string;

  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace: string = 'default';

  /** 1-1000 distinct obj_refs (a repeated one is refused, as in batch-upsert). */
  @IsArray()
  @ArrayMinSize(1)
  @ArrayMaxSize(FETCH_MAX_REFS)
  @IsString({ each: true })
  @Length(1, 256, { each: true })
  obj_refs!: string[];

  /** Also return each item's embedding (an array of numbers). */
  @IsOptional()
  @IsBoolean()
  include_embeddings: boolean = false;
}

export class ExportItemsQueryDto {
  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name!: string;

  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace: string = 'default';

  /** `next_cursor` of the previous page; absent for the first page. JSON pages only. */
  @IsOptional()
  @IsString()
  @MaxLength(2048)
  cursor?: string;

  /** Items per page, 1-1000 (default 100). JSON pages only. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(EXPORT_MAX_LIMIT)
  limit?: number;

  /** `true`: each item also carries its embedding (default false). */
  @IsOptional()
  @Transform(queryBoolean)
  @IsBoolean()
  include_embeddings?: boolean;
}

/* Response bodies, for the OpenAPI document (the Nest CLI plugin reads these classes). */

export class StoredItemDto {
  obj_ref!: string;
  id!: string | null;
  content!: string;
  metadata!: Record<string, unknown> | null;
  /** Only with include_embeddings. */
  embedding?: number[];
}

export class FetchItemsResponseDto {
  success!: boolean;
  namespace!: string;
  /** The active slot the items were read from. */
  slot!: number;
  /** The items found, in the order their obj_refs were sent. */
  items!: StoredItemDto[];
  /** The obj_refs with no item, in the order they were sent. */
  not_found!: string[];
}

export class ExportPageResponseDto {
  success!: boolean;
  namespace!: string;
  /** The active slot this page was read from. */
  slot!: number;
  /** Items in obj_ref order. */
  items!: StoredItemDto[];
  /** Pass as `cursor` for the next page; null when this page reached the end. */
  next_cursor!: string | null;
}
