/* Response bodies, for the OpenAPI document (the Nest CLI plugin reads these classes). */
import { FieldErrorDto } from '../../common/api-docs';

export { FieldErrorDto };

export class UpsertResponseDto {
  success!: boolean;
  /** Items written. */
  processed!: number;
  namespace!: string;
  /** The active slot the items went to. */
  slot!: number;
  errors!: FieldErrorDto[];
  /** Embeddings computed by the provider for this request. */
  embedded!: number;
  /** Embeddings reused because content and model were unchanged. */
  reused!: number;
}

export class RebuildResponseDto {
  success!: boolean;
  namespace!: string;
  /** Items of table `questions` now in the new slot (one `<table>_updated` per registered table). */
  questions_updated?: number;
  /** Items of table `patterns` now in the new slot. */
  patterns_updated?: number;
  total_processed!: number;
  embedded!: number;
  reused!: number;
  slot!: number;
  previous_slot!: number;
  duration_ms!: number;
}

export class RebuildProgressDto {
  success!: boolean;
  namespace!: string;
  slot!: number;
  /** running | succeeded | failed | abandoned (its process or connection died mid-rebuild) */
  status!: string;
  /** preparing | loading | indexing | switching | done */
  phase!: string;
  processed!: number;
  total!: number;
  embedded!: number;
  reused!: number;
  error!: string | null;
  started_at!: Date;
  updated_at!: Date;
  finished_at!: Date | null;
}

export class CleanupResponseDto {
  success!: boolean;
  namespace!: string;
  active_slot!: number;
  kept_previous_slot!: number | null;
  dropped_slots!: number[];
  /** Slots whose tables were still in use (a rebuild that lost its lock); a later cleanup drops them. */
  busy_slots!: number[];
}

export class RollbackResponseDto {
  success!: boolean;
  namespace!: string;
  active_slot!: number;
  previous_slot!: number;
  /** Items upserted since the switch, copied into the re-activated slot. */
  carried_over!: number;
  /** Items deleted since the switch, removed from the re-activated slot. */
  deletions_applied!: number;
}

export class SearchResultDto {
  obj_ref!: string;
  id!: string | null;
  /** Cosine similarity, 1 = same direction. */
  score!: number;
  content!: string;
  metadata!: Record<string, unknown> | null;
}

export class SearchResponseDto {
  success!: boolean;
  namespace!: string;
  slot!: number;
  results!: SearchResultDto[];
}

export class SlotStatisticsDto {
  slot!: number;
  status!: string;
  rows!: number;
  size_bytes!: number;
  index_present!: boolean;
  index_valid!: boolean;
}

export class NamespaceStatisticsDto {
  namespace!: string;
  active_slot!: number;
  building_slot!: number | null;
  previous_slot!: number | null;
  model!: string | null;
  dimension!: number | null;
  /** Per table: `{ slots: SlotStatistics[] }`. */
  tables!: Record<string, { slots: SlotStatisticsDto[] }>;
}

export class StatisticsSummaryDto {
  /** Namespaces on this page. */
  namespaces!: number;
  /** Distinct (namespace, slot) pairs listed on this page. */
  slots!: number;
  /** Rows of every slot table listed (exact counts). */
  rows!: number;
  /** Bytes of every slot table listed, indexes included. */
  bytes!: number;
}

export class StatisticsResponseDto {
  success!: boolean;
  tables!: string[];
  /** One page, in namespace order. */
  namespaces!: NamespaceStatisticsDto[];
  /** Pass as `cursor` for the next page; null on the last page. */
  next_cursor!: string | null;
  summary!: StatisticsSummaryDto;
}
