import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Inject, Injectable } from '@nestjs/common';
import { ClientBase, Pool, PoolClient } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { PG_POOL } from '../../database/database.constants';
import { FilterNode, compileFilter } from '../metadata-filter';
import { VectorTables } from '../vector-tables';
import { ItemRow, SlotRow } from '../vector.types';
import {
  COPY_COLUMNS,
  copyHeader,
  copyTrailer,
  encodeItem,
  encodeVector,
  encodeVectorArray,
} from './binary-copy';

export interface SearchHit {
  obj_ref: string;
  item_id: string | null;
  content: string;
  metadata: Record<string, unknown> | null;
  score: number;
}

interface GuardedHit {
  active_slot: number;
  /** Searches by item: whether the item was found in the slot. */
  found?: boolean;
  obj_ref: string | null;
  item_id: string | null;
  content: string | null;
  metadata: Record<string, unknown> | null;
  score: number | null;
}

/** The model and dimension a slot's embeddings must have. */
export interface EmbeddingTarget {
  model: string;
  dimension: number;
}

/** SQL: the row's embedding can go into a slot of model `$model`, dimension `$dimension`. */
const REUSABLE_FOR = (model: string, dimension: string) =>
  `COALESCE((embedding_source = 'client' AND vector_dims(embedding) = ${dimension}::int)
     OR (embedding_source = 'provider' AND model = ${model}::text), false)`;

export interface ApplyDeletions {
  /** The slot id the deletions were recorded for. */
  recordedFor: number;
  /** The slot id to remove them from. */
  intoSlot: number;
  /** The slot id that took every write meanwhile: keys it holds were upserted again. */
  truthSlot: number;
  sinceEpoch?: number;
}

/** What a filtered or by-item search looks for: near a vector, or near a stored item. */
export type SearchTarget = { vector: number[] } | { objRef: string };

export interface GuardedSearchLimits {
  k: number;
  /** The search breadth this search needs, and what connections start with. */
  efSearch: number;
  sessionEfSearch: number;
  /** hnsw.max_scan_tuples for filtered searches. */
  maxScanTuples: number;
}

export interface GuardedSearchResult {
  /** The slot the namespace's row named active, or null when the namespace is gone. */
  activeSlot: number | null;
  /** False when searching by an item the slot does not hold. */
  found: boolean;
  hits: SearchHit[];
}

export interface TableSlotStats {
  rows: number;
  bytes: number;
}

/** Item rows of the slot partitions. Identifiers come from VectorTables; values are parameters. */
@Injectable()
export class VectorItemRepository {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly tables: VectorTables,
  ) {}

  private vectorTypeOid?: Promise<number>;

  /** The vector type's OID (set when the extension was created), for binary vector arrays. */
  private vectorOid(client: PoolClient): Promise<number> {
    if (!this.vectorTypeOid) {
      const lookup = client
        .query<{ oid: number }>(`SELECT 'vector'::regtype::oid::int AS oid`)
        .then(({ rows }) => rows[0].oid);
      // A failed lookup (connection lost) is not remembered.
      lookup.catch(() => (this.vectorTypeOid = undefined));
      this.vectorTypeOid = lookup;
    }
    return this.vectorTypeOid;
  }

  /**
   * Inserts or replaces rows of one slot in a single statement (arrays unnested server-side),
   * so a 1000-item batch is one round trip. Rows go in obj_ref order, as in mergeStaging: two
   * writers of overlapping keys then wait for each other in one direction only, never deadlock.
   */
  async upsert(
    client: PoolClient,
    table: string,
    slotId: number,
    rows: ItemRow[],
    epoch: number,
    into: 'slot' | 'delta' = 'slot',
  ): Promise<number> {
    if (rows.length === 0) return 0;
    const relation =
      into === 'slot' ? this.tables.partition(table, slotId) : this.tables.delta(table, slotId);
    const result = await client.query(
      `INSERT INTO ${relation} AS t
         (slot_id, obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source,
          model, write_epoch)
       SELECT $1, r.obj_ref, r.item_id, r.content, r.content_hash, r.metadata, r.embedding,
              r.embedding_source, r.model, $10
       FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[], $7::vector[], $8::text[], $9::text[])
         AS r(obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source, model)
       ORDER BY r.obj_ref
       ON CONFLICT (slot_id, obj_ref) DO UPDATE SET
         item_id = EXCLUDED.item_id, content = EXCLUDED.content,
         content_hash = EXCLUDED.content_hash, metadata = EXCLUDED.metadata,
         embedding = EXCLUDED.embedding, embedding_source = EXCLUDED.embedding_source,
         model = EXCLUDED.model, write_epoch = EXCLUDED.write_epoch, updated_at = now()`,
      [
        slotId,
        rows.map((row) => row.obj_ref),
        rows.map((row) => row.item_id),
        rows.map((row) => row.content),
        rows.map((row) => row.content_hash),
        rows.map((row) => (row.metadata === null ? null : JSON.stringify(row.metadata))),
        encodeVectorArray(
          rows.map((row) => row.embedding),
          await this.vectorOid(client),
        ),
        rows.map((row) => row.embedding_source),
        rows.map((row) => row.model),
        epoch,
      ],
    );
    return result.rowCount ?? 0;
  }

  /** Deletes these obj_refs from a slot (or its side table); returns the ones that were there. */
  async deleteRefs(
    client: PoolClient,
    table: string,
    slotId: number,
    objRefs: string[],
    from: 'slot' | 'delta' = 'slot',
  ): Promise<string[]> {
    const relation =
      from === 'slot' ? this.tables.partition(table, slotId) : this.tables.delta(table, slotId);
    const { rows } = await client.query<{ obj_ref: string }>(
      `DELETE FROM ${relation} WHERE slot_id = $1 AND obj_ref = ANY($2::text[]) RETURNING obj_ref`,
      [slotId, objRefs],
    );
    return rows.map((row) => row.obj_ref);
  }

  /**
   * Records deletions the slot must still learn of (see vector_deletions): at a rebuild's switch
   * or at a rollback. A key deleted again keeps one row, with the later epoch.
   */
  async recordDeletions(
    client: PoolClient,
    table: string,
    slotId: number,
    objRefs: string[],
    epoch: number,
  ): Promise<void> {
    await client.query(
      `INSERT INTO vector_deletions (slot_id, table_name, obj_ref, epoch)
       SELECT $1, $2, r, $4 FROM unnest($3::text[]) AS r ORDER BY r
       ON CONFLICT (slot_id, table_name, obj_ref)
       DO UPDATE SET epoch = EXCLUDED.epoch, deleted_at = now()`,
      [slotId, table, objRefs, epoch],
    );
  }

  /**
   * Removes from `intoSlot` the keys recorded deleted for `recordedFor` (from `sinceEpoch` on)
   * that `truthSlot` does not hold: the slot that took every write meanwhile. A key deleted and
   * then upserted again is in `truthSlot`, so it stays. At a rebuild's switch, recordedFor =
   * intoSlot = the new slot and truthSlot the old active one (rows the copy read before their
   * delete go); at a rollback, recordedFor = truthSlot = the slot rolled back from.
   */
  async applyDeletions(
    client: ClientBase,
    table: string,
    { recordedFor, intoSlot, truthSlot, sinceEpoch = 0 }: ApplyDeletions,
  ): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.tables.partition(table, intoSlot)} t
       USING vector_deletions d
       WHERE d.slot_id = $1 AND d.table_name = $2 AND d.epoch >= $3 AND t.obj_ref = d.obj_ref
         AND NOT EXISTS (
           SELECT 1 FROM ${this.tables.partition(table, truthSlot)} s
           WHERE s.slot_id = $4 AND s.obj_ref = t.obj_ref)`,
      [recordedFor, table, sinceEpoch, truthSlot],
    );
    return result.rowCount ?? 0;
  }

  /** Forgets the deletions recorded for these slots (switched to, rolled back from, dropped). */
  async forgetDeletions(client: ClientBase, slotIds: number[]): Promise<void> {
    await client.query('DELETE FROM vector_deletions WHERE slot_id = ANY($1::bigint[])', [slotIds]);
  }

  /** What is stored for these obj_refs, to reuse embeddings of unchanged content. */
  async findByRefs(
    client: PoolClient,
    table: string,
    slotId: number,
    objRefs: string[],
  ): Promise<Map<string, ItemRow>> {
    const { rows } = await client.query<ItemRow>(
      `SELECT obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source, model
       FROM ${this.tables.partition(table, slotId)} WHERE obj_ref = ANY($1::text[])`,
      [objRefs],
    );
    return new Map(rows.map((row) => [row.obj_ref, row]));
  }

  /**
   * Keyset pagination over a slot in obj_ref order. The slot_id equality lets the primary key
   * (slot_id, obj_ref) serve the order: without it, every page was a full scan and a sort.
   * With `onlyStaleFor`, only rows whose embedding cannot go into such a slot as it is.
   */
  async page(
    table: string,
    slotId: number,
    after: string | null,
    limit: number,
    onlyStaleFor?: EmbeddingTarget,
  ): Promise<ItemRow[]> {
    const { rows } = await this.pool.query<ItemRow>(
      `SELECT obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source, model
       FROM ${this.tables.partition(table, slotId)}
       WHERE slot_id = $1 AND ($2::text IS NULL OR obj_ref > $2)
         AND ($4::text IS NULL OR NOT ${REUSABLE_FOR('$4', '$5')})
       ORDER BY obj_ref LIMIT $3`,
      [
        slotId,
        after,
        limit,
        onlyStaleFor?.model ?? null,
        onlyStaleFor ? Math.trunc(onlyStaleFor.dimension) : null,
      ],
    );
    return rows;
  }

  /**
   * One page of a rebuild's copy, server-side: of the next `limit` rows of `fromSlot`, those
   * whose embedding can go into `toSlot` as it is (a client vector of its dimension, a provider
   * vector of its model) are inserted there without leaving Postgres. Rows already in `toSlot`
   * came from upserts made during the rebuild, newer than this copy: they win. Returns what the
   * page held, so the caller can page on and knows how many rows it reused.
   */
  async copyReusable(
    table: string,
    fromSlot: number,
    toSlot: number,
    target: EmbeddingTarget,
    after: string | null,
    limit: number,
  ): Promise<{ scanned: number; reused: number; last: string | null }> {
    const { rows } = await this.pool.query<{
      scanned: number;
      reused: number;
      last: string | null;
    }>(
      `WITH page AS (
         SELECT obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source,
                model, ${REUSABLE_FOR('$5', '$6')} AS reusable
         FROM ${this.tables.partition(table, fromSlot)}
         WHERE slot_id = $1 AND ($2::text IS NULL OR obj_ref > $2)
         ORDER BY obj_ref LIMIT $3
       ), copied AS (
         INSERT INTO ${this.tables.partition(table, toSlot)} (${COPY_COLUMNS})
         SELECT $4, obj_ref, item_id, content, content_hash, metadata, embedding,
                embedding_source, model
         FROM page WHERE reusable ORDER BY obj_ref
         ON CONFLICT (slot_id, obj_ref) DO NOTHING
       )
       SELECT count(*)::int AS scanned, (count(*) FILTER (WHERE reusable))::int AS reused,
              max(obj_ref) AS last
       FROM page`,
      [fromSlot, after, limit, toSlot, target.model, Math.trunc(target.dimension)],
    );
    return rows[0];
  }

  /**
   * Rows of `fromSlot` written in activation epoch `epoch` or later, upserted into `toSlot`
   * (rollback carry-over). Epochs, not timestamps: an upsert whose transaction began before a
   * switch but wrote after it carries the new epoch, since it read the epoch under the same
   * row lock as the active slot it wrote to.
   */
  async copyWrittenSince(
    client: PoolClient,
    table: string,
    fromSlot: number,
    toSlot: number,
    epoch: number,
  ): Promise<number> {
    const result = await client.query(
      `INSERT INTO ${this.tables.partition(table, toSlot)} (${COPY_COLUMNS})
       SELECT $1, obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source, model
       FROM ${this.tables.partition(table, fromSlot)} WHERE write_epoch >= $2
       ORDER BY obj_ref
       ON CONFLICT (slot_id, obj_ref) DO UPDATE SET
         item_id = EXCLUDED.item_id, content = EXCLUDED.content,
         content_hash = EXCLUDED.content_hash, metadata = EXCLUDED.metadata,
         embedding = EXCLUDED.embedding, embedding_source = EXCLUDED.embedding_source,
         model = EXCLUDED.model, updated_at = now()`,
      [toSlot, epoch],
    );
    return result.rowCount ?? 0;
  }

  async count(table: string, slotId: number): Promise<number> {
    const { rows } = await this.pool.query<{ count: number }>(
      `SELECT count(*)::int AS count FROM ${this.tables.partition(table, slotId)}`,
    );
    return rows[0].count;
  }

  /**
   * Bulk-loads rows into a rebuild's staging table with binary COPY, on the caller's client (a
   * transaction that has checked the rebuild's fence).
   */
  async copyIntoStaging(
    client: PoolClient,
    table: string,
    slotId: number,
    rows: ItemRow[],
  ): Promise<void> {
    const stream = client.query(
      copyFrom(
        `COPY ${this.tables.staging(table, slotId)} (${COPY_COLUMNS}) FROM STDIN (FORMAT binary)`,
      ),
    );
    await pipeline(
      Readable.from(
        (function* () {
          yield copyHeader();
          for (const row of rows) yield encodeItem(slotId, row);
          yield copyTrailer();
        })(),
      ),
      stream,
    );
  }

  /**
   * Moves staged rows into the slot, on the caller's (fenced) transaction. Rows already there
   * came from upserts made during the rebuild, which are newer than the snapshot being copied:
   * they win.
   */
  async mergeStaging(client: PoolClient, table: string, slotId: number): Promise<number> {
    const result = await client.query(
      `INSERT INTO ${this.tables.partition(table, slotId)} (${COPY_COLUMNS})
       SELECT ${COPY_COLUMNS} FROM ${this.tables.staging(table, slotId)} ORDER BY obj_ref
       ON CONFLICT (slot_id, obj_ref) DO NOTHING`,
    );
    await client.query(`DROP TABLE IF EXISTS ${this.tables.staging(table, slotId)}`);
    return result.rowCount ?? 0;
  }

  /**
   * At the switch, in its transaction (upserts held off): the building slot's side table into
   * the slot. Its rows were written by upserts during the index build, so they are newer than
   * what the slot holds and replace it.
   */
  async mergeDelta(client: ClientBase, table: string, slotId: number): Promise<number> {
    const result = await client.query(
      `INSERT INTO ${this.tables.partition(table, slotId)} (${COPY_COLUMNS}, write_epoch)
       SELECT ${COPY_COLUMNS}, write_epoch FROM ${this.tables.delta(table, slotId)}
       ORDER BY obj_ref
       ON CONFLICT (slot_id, obj_ref) DO UPDATE SET
         item_id = EXCLUDED.item_id, content = EXCLUDED.content,
         content_hash = EXCLUDED.content_hash, metadata = EXCLUDED.metadata,
         embedding = EXCLUDED.embedding, embedding_source = EXCLUDED.embedding_source,
         model = EXCLUDED.model, write_epoch = EXCLUDED.write_epoch, updated_at = now()`,
    );
    await client.query(`DROP TABLE ${this.tables.delta(table, slotId)}`);
    return result.rowCount ?? 0;
  }

  /**
   * k nearest items by cosine distance in the slot the caller believes active, through its
   * HNSW index (the ORDER BY uses the index expression exactly), in one statement that also
   * reads which slot the namespace's row names active in the same snapshot: the items are
   * searched only if it is still this one. A caller whose cached slot was switched away from
   * learns the new one from `activeSlot` and searches again, so a search never misses a write
   * acknowledged before it was sent. The statement returns one row even when nothing matches
   * (hit columns null), and none when the namespace no longer exists.
   *
   * Connections start with hnsw.ef_search = SEARCH_EF_SEARCH (DatabaseModule), so a search
   * within it is one round trip; a larger k raises ef_search for its own transaction only
   * (SET LOCAL, sent with BEGIN in one message). The statement is prepared once per connection
   * and slot (named after both), so Postgres neither parses nor, once it settles on the generic
   * plan (the same index scan), plans it again. A statement of a dropped slot fails as the table
   * does (42P01), which the caller handles by looking the slot up again.
   */
  async search(
    table: string,
    slot: Pick<SlotRow, 'id' | 'slot' | 'namespace' | 'dimension'>,
    vector: number[],
    k: number,
    efSearch: number,
    sessionEfSearch: number,
  ): Promise<{ activeSlot: number | null; hits: SearchHit[] }> {
    const statement = {
      name: `search_${table}_${Math.trunc(slot.id)}_${Math.trunc(slot.dimension)}`,
      text: this.searchSql(table, slot),
      values: [encodeVector(vector), k, slot.namespace],
    };
    const rows =
      efSearch <= sessionEfSearch
        ? (await this.pool.query<GuardedHit>(statement)).rows
        : await this.inTransaction(
            [`hnsw.ef_search = ${Math.trunc(efSearch)}`],
            async (client) => (await client.query<GuardedHit>(statement)).rows,
          );
    if (rows.length === 0) return { activeSlot: null, hits: [] };
    return { activeSlot: rows[0].active_slot, hits: toHits(rows) };
  }

  /** The index scan runs behind a one-time filter on the namespace row read in the same snapshot. */
  searchSql(table: string, slot: Pick<SlotRow, 'id' | 'slot' | 'dimension'>): string {
    const d = Math.trunc(slot.dimension);
    return `SELECT n.active_slot, h.obj_ref, h.item_id, h.content, h.metadata, h.score
            FROM vector_namespaces n
            LEFT JOIN LATERAL (
              SELECT obj_ref, item_id, content, metadata,
                     1 - (embedding::vector(${d}) <=> $1::vector(${d})) AS score
              FROM ${this.tables.partition(table, slot.id)}
              WHERE n.active_slot = ${Math.trunc(slot.slot)}
              ORDER BY embedding::vector(${d}) <=> $1::vector(${d})
              LIMIT $2
            ) h ON true
            WHERE n.namespace = $3`;
  }

  async explainSearch(
    table: string,
    slot: Pick<SlotRow, 'id' | 'slot' | 'namespace' | 'dimension'>,
    vector: number[],
  ): Promise<string> {
    const { rows } = await this.pool.query<{ 'QUERY PLAN': string }>(
      `EXPLAIN ${this.searchSql(table, slot)}`,
      [encodeVector(vector), 10, slot.namespace],
    );
    return rows.map((row) => row['QUERY PLAN']).join('\n');
  }

  /**
   * The k nearest items matching a metadata filter, and/or near a stored item (its own
   * embedding, the item left out), guarded by the active slot like `search`.
   *
   * A filtered statement turns on pgvector 0.8's iterative index scan for itself: the index scan
   * goes on past ef_search until k rows pass the filter (or `maxScanTuples` are visited), and
   * the outer ORDER BY puts relaxed_order's slightly out-of-order rows back in order. The
   * settings are made inside the statement, by set_config(…, true) in a LATERAL row that the
   * scan's gating condition refers to: they are in place before the index scan starts and end
   * with the statement's implicit transaction. So a filtered search is one round trip, like a
   * plain one, rather than BEGIN + SET LOCAL, the statement and COMMIT. It is not prepared (its
   * shape varies with the filter), so each is planned with its values: the planner picks the
   * HNSW scan or, for a filter it expects to keep few rows, the GIN index and an exact sort.
   * If the index scan still comes back short of k (a filter keeping fewer rows than the visited
   * tuples reach), the statement runs once more without index scans (SET LOCAL
   * enable_indexscan = off, planner-time, hence a transaction): an exact answer, so a search
   * returns k rows whenever k rows match.
   *
   * By item without a filter the only filter is the item itself: ef_search k + 1 suffices, and
   * the statement is prepared per slot like `search` (one round trip).
   */
  async searchGuarded(
    table: string,
    slot: Pick<SlotRow, 'id' | 'slot' | 'namespace' | 'dimension'>,
    target: SearchTarget,
    filter: FilterNode | null,
    limits: GuardedSearchLimits,
  ): Promise<GuardedSearchResult> {
    const { k, efSearch, sessionEfSearch } = limits;
    const statement = this.guardedStatement(table, slot, target, filter, limits);
    let rows: GuardedHit[];
    if (filter) {
      rows = (await this.pool.query<GuardedHit>(statement)).rows;
      // Not for a slot that is no longer active (the caller retries on the new one) or an
      // item the slot does not hold.
      const short =
        rows.length > 0 &&
        rows[0].active_slot === slot.slot &&
        rows[0].found !== false &&
        hitCount(rows) < k;
      if (short) {
        rows = await this.inTransaction(
          ['enable_indexscan = off'],
          async (client) => (await client.query<GuardedHit>(statement)).rows,
        );
      }
    } else {
      const prepared = {
        ...statement,
        name: `search_ref_${table}_${Math.trunc(slot.id)}_${Math.trunc(slot.dimension)}`,
      };
      rows =
        efSearch <= sessionEfSearch
          ? (await this.pool.query<GuardedHit>(prepared)).rows
          : await this.inTransaction(
              [`hnsw.ef_search = ${Math.trunc(efSearch)}`],
              async (client) => (await client.query<GuardedHit>(prepared)).rows,
            );
    }
    if (rows.length === 0) return { activeSlot: null, found: false, hits: [] };
    return {
      activeSlot: rows[0].active_slot,
      found: rows[0].found !== false,
      hits: toHits(rows),
    };
  }

  /**
   * `work` in a transaction whose SET LOCALs (constants of this class, never request data) go
   * in one message with BEGIN: one round trip fewer than BEGIN, then SET.
   */
  private async inTransaction<T>(
    settings: string[],
    work: (client: PoolClient) => Promise<T>,
  ): Promise<T> {
    const client = await this.pool.connect();
    try {
      await client.query(
        ['BEGIN', ...settings.map((setting) => `SET LOCAL ${setting}`)].join('; '),
      );
      try {
        const result = await work(client);
        await client.query('COMMIT');
        return result;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw error;
      }
    } finally {
      client.release();
    }
  }

  /** The statement and values of `searchGuarded` (the filter compiled to parameters). */
  private guardedStatement(
    table: string,
    slot: Pick<SlotRow, 'id' | 'slot' | 'namespace' | 'dimension'>,
    target: SearchTarget,
    filter: FilterNode | null,
    limits: GuardedSearchLimits,
  ): { text: string; values: unknown[] } {
    const byRef = 'objRef' in target;
    const values: unknown[] = byRef
      ? [target.objRef, limits.k, slot.namespace, Math.trunc(slot.id)]
      : [encodeVector(target.vector), limits.k, slot.namespace];
    const compiled = filter ? compileFilter(filter, 'metadata', values.length + 1) : null;
    return {
      text: this.guardedSearchSql(table, slot, byRef, compiled && { ...limits, ...compiled }),
      values: compiled ? [...values, ...compiled.values] : values,
    };
  }

  /**
   * `searchSql` with a filter and/or a stored item as the query. By item: $1 the obj_ref and $4
   * the slot id (so the primary key finds it); by vector: $1 the vector. Then $2 k, $3 the
   * namespace; the filter's parameters follow. A filtered statement sets its scan's GUCs in the
   * LATERAL row `scan` (integers from the configuration, not request data), which the gating
   * condition of the item scan refers to, so they are set before that scan begins.
   */
  guardedSearchSql(
    table: string,
    slot: Pick<SlotRow, 'id' | 'slot' | 'dimension'>,
    byRef: boolean,
    filter: { sql: string; efSearch: number; maxScanTuples: number } | null,
  ): string {
    const d = Math.trunc(slot.dimension);
    const partition = this.tables.partition(table, slot.id);
    const active = `n.active_slot = ${Math.trunc(slot.slot)}`;
    const query = byRef ? 's.embedding' : `$1::vector(${d})`;
    const source = byRef
      ? `LEFT JOIN LATERAL (
           SELECT embedding::vector(${d}) AS embedding FROM ${partition}
           WHERE ${active} AND slot_id = $4 AND obj_ref = $1
         ) s ON true`
      : '';
    const settings = filter
      ? `CROSS JOIN LATERAL (
           SELECT concat(set_config('hnsw.iterative_scan', 'relaxed_order', true),
                         set_config('hnsw.max_scan_tuples', '${Math.trunc(filter.maxScanTuples)}', true),
                         set_config('hnsw.ef_search', '${Math.trunc(filter.efSearch)}', true)) AS settings
         ) scan`
      : '';
    const conditions = [
      active,
      ...(filter ? ['scan.settings IS NOT NULL'] : []),
      ...(byRef ? ['s.embedding IS NOT NULL', 'obj_ref <> $1'] : []),
      ...(filter ? [filter.sql] : []),
    ];
    return `SELECT n.active_slot, ${byRef ? 's.embedding IS NOT NULL' : 'true'} AS found,
                   h.obj_ref, h.item_id, h.content, h.metadata, 1 - h.distance AS score
            FROM vector_namespaces n
            ${settings}
            ${source}
            LEFT JOIN LATERAL (
              SELECT obj_ref, item_id, content, metadata,
                     embedding::vector(${d}) <=> ${query} AS distance
              FROM ${partition}
              WHERE ${conditions.join(' AND ')}
              ORDER BY embedding::vector(${d}) <=> ${query}
              LIMIT $2
            ) h ON true
            WHERE n.namespace = $3
            ORDER BY h.distance`;
  }

  /** The plan of a filtered search by vector (EXPLAIN ANALYZE with `analyze`: it runs). */
  async explainFilteredSearch(
    table: string,
    slot: Pick<SlotRow, 'id' | 'slot' | 'namespace' | 'dimension'>,
    vector: number[],
    filter: FilterNode,
    limits: GuardedSearchLimits,
    analyze = false,
  ): Promise<string> {
    const statement = this.guardedStatement(table, slot, { vector }, filter, limits);
    const { rows } = await this.pool.query<{ 'QUERY PLAN': string }>({
      ...statement,
      text: `EXPLAIN ${analyze ? '(ANALYZE, COSTS OFF)' : ''} ${statement.text}`,
    });
    return rows.map((row) => row['QUERY PLAN']).join('\n');
  }

  async stats(table: string, slotId: number): Promise<TableSlotStats> {
    const { rows } = await this.pool.query<{ rows: number; bytes: string }>(
      `SELECT (SELECT count(*)::int FROM ${this.tables.partition(table, slotId)}) AS rows,
              pg_total_relation_size($1::regclass) AS bytes`,
      [this.tables.partitionName(table, slotId)],
    );
    return { rows: rows[0].rows, bytes: Number(rows[0].bytes) };
  }
}

/** The guarded statements' rows as hits (a row of nulls stands for no hit). */
function toHits(rows: GuardedHit[]): SearchHit[] {
  const hits: SearchHit[] = [];
  for (const row of rows) {
    if (row.obj_ref === null) continue;
    hits.push({
      obj_ref: row.obj_ref,
      item_id: row.item_id,
      content: row.content!,
      metadata: row.metadata,
      score: row.score!,
    });
  }
  return hits;
}

function hitCount(rows: GuardedHit[]): number {
  return rows.reduce((count, row) => count + (row.obj_ref === null ? 0 : 1), 0);
}
