/** A slot as recorded in vector_slots. */
export interface SlotRow {
  id: number;
  namespace: string;
  slot: number;
  model: string;
  dimension: number;
  status: 'building' | 'active' | 'retired';
  created_at: Date;
  activated_at: Date | null;
}

export interface NamespaceRow {
  namespace: string;
  active_slot: number;
  building_slot: number | null;
  /** The building slot's index is being built: upserts write its side tables meanwhile. */
  building_indexing: boolean;
  previous_slot: number | null;
  /** Bumped at every change of the active slot; upserts stamp their rows with it. */
  epoch: number;
}

/** What an upsert writes to, read in its transaction with the namespace row held FOR SHARE. */
export interface WriteTargets {
  namespace: NamespaceRow;
  active: SlotRow;
  /** The slot a live rebuild is loading; null when none, or when its rebuild has died. */
  building: SlotRow | null;
}

/** One item row as stored. */
export interface ItemRow {
  obj_ref: string;
  item_id: string | null;
  content: string;
  content_hash: Buffer;
  metadata: Record<string, unknown> | null;
  embedding: number[];
  /** `client` (sent with the item, copied as is) or `provider` (made by `model`). */
  embedding_source: 'client' | 'provider';
  model: string | null;
}

export interface RebuildProgress {
  namespace: string;
  slot: number;
  /** `abandoned`: still marked running, but the process that ran it is gone. */
  status: 'running' | 'succeeded' | 'failed' | 'abandoned';
  phase: string;
  processed: number;
  total: number;
  embedded: number;
  reused: number;
  error: string | null;
  started_at: Date;
  updated_at: Date;
  finished_at: Date | null;
}
