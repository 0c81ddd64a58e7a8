import { IsOptional, IsString, IsUUID, Matches } from 'class-validator';

const NAMESPACE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const NAMESPACE_MESSAGE =
  'namespace must be 1-64 characters: lower-case letters, digits, _ or -, starting with a letter or digit';
const TABLE = /^[a-z][a-z0-9_]{0,39}$/;
const TABLE_MESSAGE = 'table_name must be a registered table name';

/** Query of POST /import (the body is NDJSON, one batch-upsert item a line). */
export class ImportQueryDto {
  @IsString()
  @Matches(TABLE, { message: TABLE_MESSAGE })
  table_name!: string;

  @IsOptional()
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace: string = 'default';
}

export class ImportIdParamDto {
  @IsUUID()
  id!: string;
}

export class ImportsQueryDto {
  @IsString()
  @Matches(NAMESPACE, { message: NAMESPACE_MESSAGE })
  namespace!: string;
}

export class ImportResponseDto {
  success!: boolean;
  /** Its progress: GET /api/v1/vector/imports/{import_id}. */
  import_id!: string;
  namespace!: string;
  table_name!: string;
  /** merge (into the active slot) | slot (a new slot, indexed once and switched to) */
  mode!: string;
  /** Lines read, blank ones included. */
  lines!: number;
  /** Items written. */
  processed!: number;
  /** Embeddings computed by the provider (lines without an embedding). */
  embedded!: number;
  /** The slot now active, holding the items. */
  slot!: number;
  /** The slot active before (mode slot), kept for rollback; null for a merge. */
  previous_slot!: number | null;
  duration_ms!: number;
}

export class ImportProgressDto {
  success!: boolean;
  id!: string;
  namespace!: string;
  table_name!: string;
  /**
   * receiving | loading | indexing | switching | succeeded | failed | abandoned (its process or
   * connection died mid-import; nothing of it was written)
   */
  status!: string;
  /** merge | slot, once chosen (after the last line), else null */
  mode!: string | null;
  lines!: number;
  rows!: number;
  embedded!: number;
  slot!: number | null;
  error!: string | null;
  started_at!: Date;
  updated_at!: Date;
  finished_at!: Date | null;
}
