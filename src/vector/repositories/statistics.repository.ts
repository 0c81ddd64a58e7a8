import { Inject, Injectable } from '@nestjs/common';
import { Pool } from 'pg';
import { PG_POOL } from '../../database/database.constants';
import { SlotRow } from '../vector.types';
import { VectorTables } from '../vector-tables';

/** A namespace of a statistics page, with all its slots (in slot order). */
export interface NamespaceWithSlots {
  namespace: string;
  active_slot: number;
  building_slot: number | null;
  previous_slot: number | null;
  slots: Pick<SlotRow, 'id' | 'slot' | 'status' | 'model' | 'dimension'>[];
}

/** A slot's table for one registered table, as the catalog has it now. */
export interface SlotTable {
  table: string;
  slotId: number;
}

/** What the catalog says about a slot table: its oid (if it exists) and its HNSW index. */
export interface SlotTableFacts {
  oid: number;
  index_present: boolean;
  index_valid: boolean;
}

export interface SlotTableCount {
  rows: number;
  /** Null when the table was dropped after it was found (pg_total_relation_size of a gone oid). */
  bytes: number | null;
}

/**
 * Statistics read in a few set-based statements per page, whatever the number of namespaces:
 * the page's namespaces with their slots, the catalog facts of every slot table of the page,
 * then exact row counts and sizes (see countAndSize).
 */
@Injectable()
export class StatisticsRepository {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly tables: VectorTables,
  ) {}

  /**
   * Up to `limit` namespaces after `after` in name order (keyset: the primary key serves it),
   * each with its slots, in one statement.
   */
  async namespacesPage(
    after: string | null,
    limit: number,
    namespace: string | null,
  ): Promise<NamespaceWithSlots[]> {
    const { rows } = await this.pool.query<NamespaceWithSlots>(
      `SELECT n.namespace, n.active_slot, n.building_slot, n.previous_slot,
              COALESCE(
                (SELECT json_agg(json_build_object('id', s.id, 'slot', s.slot, 'status', s.status,
                                   'model', s.model, 'dimension', s.dimension) ORDER BY s.slot)
                 FROM vector_slots s WHERE s.namespace = n.namespace),
                '[]'::json) AS slots
       FROM (SELECT namespace, active_slot, building_slot, previous_slot FROM vector_namespaces
             WHERE ($1::text IS NULL OR namespace > $1) AND ($2::text IS NULL OR namespace = $2)
             ORDER BY namespace LIMIT $3) n
       ORDER BY n.namespace`,
      [after, namespace, limit],
    );
    return rows;
  }

  /**
   * Which of the given slot tables exist, with their index's presence and validity: catalog
   * reads only, no table locks, one statement for the whole page.
   */
  async slotTableFacts(slotTables: SlotTable[]): Promise<Map<string, SlotTableFacts>> {
    if (slotTables.length === 0) return new Map();
    const names = slotTables.map(({ table, slotId }) => this.tables.partitionName(table, slotId));
    const { rows } = await this.pool.query<SlotTableFacts & { name: string }>(
      `SELECT c.relname AS name, c.oid::int8::float8 AS oid,
              i.indexrelid IS NOT NULL AS index_present, COALESCE(i.indisvalid, false) AS index_valid
       FROM pg_class c
       LEFT JOIN pg_class ic ON ic.relname = c.relname || '_hnsw'
                            AND ic.relnamespace = c.relnamespace
       LEFT JOIN pg_index i ON i.indexrelid = ic.oid
       WHERE c.relname = ANY($1::text[]) AND c.relnamespace = 'public'::regnamespace
         AND c.relkind = 'r'`,
      [names],
    );
    return new Map(rows.map(({ name, ...facts }) => [name, facts]));
  }

  /**
   * Exact row counts (count(*) per table) and total sizes of existing slot tables: one UNION ALL
   * statement per chunk of tables, so a page of 100 namespaces is one statement. Chunked because
   * one statement holds a lock on every table and index it reads until it ends, and the shared
   * lock table is sized for about 64 per connection. A table dropped meanwhile makes the
   * statement fail with 42P01 (the caller reads the catalog again); identifiers are built by
   * VectorTables from numeric slot ids and registered names, and quoted.
   */
  async countAndSize(slotTables: (SlotTable & { oid: number })[]): Promise<SlotTableCount[]> {
    const counts: SlotTableCount[] = [];
    for (let start = 0; start < slotTables.length; start += COUNT_CHUNK) {
      const chunk = slotTables.slice(start, start + COUNT_CHUNK);
      const branches = chunk.map(
        ({ table, slotId }, i) =>
          `SELECT ${i} AS k, (SELECT count(*) FROM ${this.tables.partition(table, slotId)})::float8 AS rows,
                  pg_total_relation_size($${i + 1}::oid::regclass)::float8 AS bytes`,
      );
      const { rows } = await this.pool.query<SlotTableCount & { k: number }>(
        branches.join('\nUNION ALL\n'),
        chunk.map(({ oid }) => oid),
      );
      const byKey = new Map(rows.map((row) => [row.k, row]));
      for (let i = 0; i < chunk.length; i++) {
        const row = byKey.get(i)!;
        counts.push({ rows: row.rows, bytes: row.bytes });
      }
    }
    return counts;
  }
}

/** Slot tables per count statement (a table, its primary key and HNSW index: 3 locks each). */
const COUNT_CHUNK = 200;
