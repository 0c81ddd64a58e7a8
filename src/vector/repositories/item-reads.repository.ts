import { Inject, Injectable } from '@nestjs/common';
import { Pool } from 'pg';
import { PG_POOL } from '../../database/database.constants';
import { VectorTables } from '../vector-tables';
import { SlotRow } from '../vector.types';

/**
 * An item as stored, its JSON-valued columns left as Postgres writes them: `metadata` is jsonb's
 * text and `embedding` pgvector's text (`[0.1,-2,3e-05]`), both valid JSON. An export splices
 * them into its lines as they are, instead of parsing and serialising 384 numbers per row.
 */
export interface StoredItemText {
  obj_ref: string;
  item_id: string | null;
  content: string;
  metadata: string | null;
  /** Null unless embeddings were asked for. */
  embedding: string | null;
}

/** The slot a read believes active (its partition is named after `id`, the guard uses `slot`). */
export type ReadSlot = Pick<SlotRow, 'id' | 'slot' | 'namespace'>;

/**
 * What a guarded read found: `activeSlot` is the namespace's active slot in the statement's own
 * snapshot (null: no such namespace); the items were read only if that is the slot asked for.
 */
export interface GuardedRead {
  activeSlot: number | null;
  items: StoredItemText[];
}

/** A guarded read of NDJSON lines, and the obj_ref of the last (null: none). */
export interface GuardedLines {
  activeSlot: number | null;
  lines: string[];
  last: string | null;
}

interface GuardedRow {
  active_slot: number;
  obj_ref: string | null;
  item_id: string | null;
  content: string | null;
  metadata: string | null;
  embedding: string | null;
}

/**
 * Reads of stored items by obj_ref and in obj_ref order (fetch, export). Like a search, each read
 * is one statement that also reads the namespace row in the same snapshot and reads the slot's
 * partition only while that slot is still the active one: a caller whose slot was switched away
 * from learns the new one and reads again, so it never answers from a retired slot. A slot whose
 * tables were dropped meanwhile fails with 42P01, which the caller also answers by looking again.
 * Identifiers come from VectorTables; values are parameters.
 */
@Injectable()
export class ItemReadsRepository {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly tables: VectorTables,
  ) {}

  /** The items of these obj_refs (those that exist), in obj_ref order. */
  byRefs(
    table: string,
    slot: ReadSlot,
    objRefs: string[],
    withEmbeddings: boolean,
  ): Promise<GuardedRead> {
    return this.guarded(table, slot, withEmbeddings, 'obj_ref = ANY($4::text[]) ORDER BY obj_ref', [
      objRefs,
    ]);
  }

  /**
   * Keyset page: the first `limit` items after `after` ('' for the start: obj_refs are never
   * empty) in obj_ref order. `slot_id = … AND obj_ref > …` is a range of the primary key
   * (slot_id, obj_ref), which serves the order and the limit without a sort.
   */
  page(
    table: string,
    slot: ReadSlot,
    after: string,
    limit: number,
    withEmbeddings: boolean,
  ): Promise<GuardedRead> {
    return this.guarded(table, slot, withEmbeddings, 'obj_ref > $4 ORDER BY obj_ref LIMIT $5', [
      after,
      Math.trunc(limit),
    ]);
  }

  /**
   * A keyset page (as `page`) with each item already one NDJSON line, built by Postgres: its
   * jsonb and vector text are JSON as they are, and to_json escapes the strings as JSON does.
   * The service then only joins lines, which keeps an export's cost in Postgres's text output.
   */
  async pageLines(
    table: string,
    slot: ReadSlot,
    after: string,
    limit: number,
    withEmbeddings: boolean,
  ): Promise<GuardedLines> {
    const { rows } = await this.pool.query<[number, string | null, string | null]>({
      text: this.guardedSql(
        table,
        slot,
        `obj_ref,
         '{"obj_ref":' || to_json(obj_ref)::text
           || ',"id":' || COALESCE(to_json(item_id)::text, 'null')
           || ',"content":' || to_json(content)::text
           || ',"metadata":' || COALESCE(metadata::text, 'null')
           || CASE WHEN $3::boolean THEN ',"embedding":' || embedding::text ELSE '' END
           || '}' AS line`,
        'i.obj_ref, i.line',
        'obj_ref > $4 ORDER BY obj_ref LIMIT $5',
      ),
      values: [slot.namespace, Math.trunc(slot.slot), withEmbeddings, after, Math.trunc(limit)],
      rowMode: 'array',
    });
    if (rows.length === 0) return { activeSlot: null, lines: [], last: null };
    const lines: string[] = [];
    let last: string | null = null;
    for (const [, objRef, line] of rows) {
      if (objRef === null) continue;
      lines.push(line!);
      last = objRef;
    }
    return { activeSlot: rows[0][0], lines, last };
  }

  /**
   * The partition is read in a LATERAL subquery behind `n.active_slot = $2`, so the statement
   * returns one row (item columns null) when nothing matches or the slot is no longer active, and
   * none when the namespace does not exist. With the namespace row as the only outer row, the
   * nested loop returns the subquery's rows in its ORDER BY order (as a search's do).
   */
  private async guarded(
    table: string,
    slot: ReadSlot,
    withEmbeddings: boolean,
    condition: string,
    values: unknown[],
  ): Promise<GuardedRead> {
    const { rows } = await this.pool.query<GuardedRow>(
      this.guardedSql(
        table,
        slot,
        `obj_ref, item_id, content, metadata::text AS metadata,
         CASE WHEN $3::boolean THEN embedding::text END AS embedding`,
        'i.obj_ref, i.item_id, i.content, i.metadata, i.embedding',
        condition,
      ),
      [slot.namespace, Math.trunc(slot.slot), withEmbeddings, ...values],
    );
    if (rows.length === 0) return { activeSlot: null, items: [] };
    const items: StoredItemText[] = [];
    for (const row of rows) {
      if (row.obj_ref === null) continue;
      items.push({
        obj_ref: row.obj_ref,
        item_id: row.item_id,
        content: row.content!,
        metadata: row.metadata,
        embedding: row.embedding,
      });
    }
    return { activeSlot: rows[0].active_slot, items };
  }

  /** $1 namespace, $2 the slot number read, $3 with embeddings; `condition` may use $4, $5. */
  private guardedSql(
    table: string,
    slot: ReadSlot,
    columns: string,
    outer: string,
    condition: string,
  ): string {
    return `SELECT n.active_slot, ${outer}
            FROM vector_namespaces n
            LEFT JOIN LATERAL (
              SELECT ${columns}
              FROM ${this.tables.partition(table, slot.id)}
              WHERE n.active_slot = $2 AND slot_id = ${Math.trunc(slot.id)} AND ${condition}
            ) i ON true
            WHERE n.namespace = $1`;
  }
}
