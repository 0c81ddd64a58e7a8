import { ArrayMaxSize, ArrayMinSize, IsArray, IsString, Length, Matches } from 'class-validator';
import { NamespaceDto, TABLE, TABLE_MESSAGE } from './vector.dto';

/** At most this many obj_refs per batch-delete. */
export const MAX_DELETE_REFS = 1_000;

export class BatchDeleteDto extends NamespaceDto {
  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name!: string;

  /** The items to delete, by obj_ref (1 to 1000, each at most once). */
  @IsArray()
  @ArrayMinSize(1)
  @ArrayMaxSize(MAX_DELETE_REFS)
  @IsString({ each: true })
  @Length(1, 256, { each: true })
  obj_refs!: string[];
}

export class BatchDeleteResponseDto {
  success!: boolean;
  namespace!: string;
  /** Items removed from the active slot. */
  deleted!: number;
  /** The obj_refs that the active slot did not hold. */
  not_found!: string[];
}

export class DropNamespaceResponseDto {
  success!: boolean;
  namespace!: string;
  /** The slots whose tables were dropped with the namespace. */
  dropped_slots!: number[];
}
