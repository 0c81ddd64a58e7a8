import { Inject, Injectable } from '@nestjs/common';
import { Pool } from 'pg';
import { to as copyTo } from 'pg-copy-streams';
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

/** What an NDJSON page found: the active slot, and how many items it sent, up to which. */
export interface PageEnd {
  activeSlot: number | null;
  rows: number;
  /** The obj_ref of the page's last item; null when it had none. */
  last: string | null;
}

/**
 * SQL of an item's NDJSON line (the fields of a JSON page's item) from its row: jsonb and vector
 * text are JSON as Postgres writes them, and to_json escapes strings (control characters
 * included) as JSON does.
 */
export function ndjsonLineSql(withEmbeddings: boolean): string {
  return `'{"obj_ref":' || to_json(obj_ref)::text
          || ',"id":' || COALESCE(to_json(item_id)::text, 'null')
          || ',"content":' || to_json(content)::text
          || ',"metadata":' || COALESCE(metadata::text, 'null')
          || ${withEmbeddings ? `',"embedding":' || embedding::text ||` : ''} '}'`;
}

/** The CSV quote byte of an export's COPY, never in an unquoted value. */
const CSV_QUOTE = 0x02;

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
   * A keyset page (as `page`) as NDJSON, yielded as the raw bytes Postgres sends: each item is
   * one line built by Postgres (its jsonb and vector text are JSON as they are; to_json escapes
   * strings as JSON does) and sent by COPY, so the service neither decodes nor re-encodes them.
   * Yields nothing, and returns the active slot it found, when `slot` is no longer active.
   *
   * COPY takes no parameters, so the page is fixed first, in one REPEATABLE READ transaction:
   * a guarded statement (the namespace row and the page's keys in one snapshot) counts the page
   * and stores its bounds as transaction-local settings, which the COPY of the same snapshot
   * reads back: values never enter the SQL text. CSV with delimiter and quote bytes that JSON
   * text never holds unescaped (Postgres escapes control characters in JSON) writes each value
   * as it is, one per line.
   *
   * Holds one pool connection while the page is read and sent. A consumer that stops early
   * (the client went away) has the connection closed rather than returned mid-COPY.
   */
  async *ndjsonPage(
    table: string,
    slot: ReadSlot,
    after: string,
    limit: number,
    withEmbeddings: boolean,
  ): AsyncGenerator<Buffer, PageEnd> {
    const client = await this.pool.connect();
    let reusable = false;
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const { rows } = await client.query<PageEnd & { bounds: string }>(
        `SELECT n.active_slot AS "activeSlot", p.rows, p.last,
                set_config('vector_export.after', $2, true)
                  || set_config('vector_export.last', COALESCE(p.last, ''), true) AS bounds
         FROM vector_namespaces n
         CROSS JOIN LATERAL (
           SELECT count(*)::int AS rows, max(obj_ref) AS last
           FROM (SELECT obj_ref FROM ${this.tables.partition(table, slot.id)}
                 WHERE n.active_slot = $3 AND slot_id = ${Math.trunc(slot.id)} AND obj_ref > $2
                 ORDER BY obj_ref LIMIT $4) k
         ) p
         WHERE n.namespace = $1`,
        [slot.namespace, after, Math.trunc(slot.slot), Math.trunc(limit)],
      );
      const end: PageEnd = rows[0]
        ? { activeSlot: rows[0].activeSlot, rows: rows[0].rows, last: rows[0].last }
        : { activeSlot: null, rows: 0, last: null };
      if (end.activeSlot === slot.slot && end.rows > 0) {
        const copy = client.query(
          copyTo(
            `COPY (SELECT ${ndjsonLineSql(withEmbeddings)}
                   FROM ${this.tables.partition(table, slot.id)}
                   WHERE slot_id = ${Math.trunc(slot.id)}
                     AND obj_ref > current_setting('vector_export.after')
                     AND obj_ref <= current_setting('vector_export.last')
                   ORDER BY obj_ref)
             TO STDOUT (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')`,
          ),
        );
        for await (const chunk of copy as AsyncIterable<Buffer>) {
          // A quoted value would not be a JSON line: refuse it rather than send it.
          if (chunk.includes(CSV_QUOTE)) throw new Error('an exported line needed CSV quoting');
          yield chunk;
        }
      }
      await client.query('COMMIT');
      reusable = true;
      return end;
    } finally {
      if (reusable) client.release();
      // Failed or abandoned mid-transaction or mid-COPY: the connection is closed, not reused.
      else client.release(new Error('export page not finished'));
    }
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
