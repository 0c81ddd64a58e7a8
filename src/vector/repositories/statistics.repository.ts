import { Inject, Injectable } from '@nestjs/common';
import { ClientBase, Pool } from 'pg';
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

/** What the catalog says about a slot table: its oid, whether it is attached, its HNSW index. */
export interface SlotTableFacts {
  oid: number;
  /** Attached to its table's parent: counted through the parent (see countRows). */
  attached: boolean;
  index_present: boolean;
  index_valid: boolean;
}

/** A slot table's size and whether it is still attached, read after its rows were counted. */
export interface SlotTableSize {
  /** Null when the table is gone (pg_total_relation_size of a dropped oid). */
  bytes: number | null;
  attached: boolean;
}

/**
 * Statistics read in a few set-based statements per page, whatever the number of namespaces:
 * the page's namespaces with their slots, the catalog facts of every slot table of the page,
 * exact row counts, then sizes.
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
   * Which of the given slot tables exist, whether they are attached, and their index's presence
   * and validity: catalog reads only, no table locks, one statement for the whole page.
   */
  async slotTableFacts(
    db: ClientBase,
    slotTables: SlotTable[],
  ): Promise<Map<string, SlotTableFacts>> {
    if (slotTables.length === 0) return new Map();
    const names = slotTables.map(({ table, slotId }) => this.tables.partitionName(table, slotId));
    const { rows } = await db.query<SlotTableFacts & { name: string }>(
      `SELECT c.relname AS name, c.oid::int8::float8 AS oid, c.relispartition AS attached,
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
   * One connection for the reads of a page: Postgres builds a backend's cache entry for each
   * table and index the first time that backend opens it, which is most of what a page costs
   * on tables it has not seen; counts and sizes on one backend pay for that once, not twice.
   * Serial plans and no JIT on it meanwhile (see countAndSize), reset before it goes back to
   * the pool (a connection that cannot be reset is discarded).
   */
  async session<T>(work: (db: ClientBase) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query(SERIAL_PLAN);
      return await work(client);
    } finally {
      await client
        .query('RESET max_parallel_workers_per_gather; RESET jit')
        .catch((error: Error) => {
          broken = error;
        });
      client.release(broken);
    }
  }

  /**
   * Exact row counts (keyed by partition name; an attached table without rows has none), then
   * total sizes (indexes and TOAST included) and whether each table is still attached (by oid),
   * for at most MEASURE_CHUNK slot tables, in two statements on a connection of `session`.
   *
   * Attached tables are counted through their parent, `WHERE slot_id = ANY(…) GROUP BY slot_id`:
   * the planner prunes to the listed partitions, and that costs a tenth of one `count(*)` per
   * table (measured on 200 one-row tables: 12–29 ms against 90–360 ms), whose per-statement
   * planning and start-up dominate when tables are small. Tables not attached (a rebuild's
   * building slot) are counted one by one in the same statement; if one is dropped meanwhile
   * the statement fails with 42P01 and the caller reads the catalog again. Serial plan, no JIT
   * (set by `session`): over a few hundred small partitions the planner picks a parallel
   * append, and starting its workers took 50–300 ms against 1–5 ms of execution.
   *
   * Sizes come after the counts, so that a table a cleanup detached or dropped meanwhile is
   * seen as such. Chunked because a statement holds a lock on every table and index it opened
   * until it ends, and the shared lock table is sized for about 64 per connection.
   */
  async countAndSize(
    db: ClientBase,
    chunk: (SlotTable & { attached: boolean; oid: number })[],
  ): Promise<{ rows: Map<string, number>; sizes: Map<number, SlotTableSize> }> {
    const branches: string[] = [];
    const params: number[][] = [];
    for (const [t, table] of this.tables.names.entries()) {
      const attached = chunk.filter((s) => s.table === table && s.attached).map((s) => s.slotId);
      if (attached.length > 0) {
        params.push(attached);
        branches.push(
          `SELECT ${t} AS t, slot_id::float8 AS slot_id, count(*)::float8 AS rows
           FROM ${this.tables.parent(table)} WHERE slot_id = ANY($${params.length}::bigint[])
           GROUP BY slot_id`,
        );
      }
      for (const { slotId } of chunk.filter((s) => s.table === table && !s.attached)) {
        branches.push(
          `SELECT ${t} AS t, ${slotId}::float8 AS slot_id, count(*)::float8 AS rows
           FROM ${this.tables.partition(table, slotId)}`,
        );
      }
    }
    const counted =
      branches.length === 0
        ? []
        : (
            await db.query<{ t: number; slot_id: number; rows: number }>(
              branches.join('\nUNION ALL\n'),
              params,
            )
          ).rows;
    const sized = await db.query<SlotTableSize & { oid: number }>(
      `SELECT o.oid::int8::float8 AS oid, pg_total_relation_size(o.oid::regclass)::float8 AS bytes,
              COALESCE(c.relispartition, false) AS attached
       FROM unnest($1::oid[]) AS o(oid) LEFT JOIN pg_class c ON c.oid = o.oid`,
      [chunk.map(({ oid }) => oid)],
    );
    return {
      rows: new Map(
        counted.map((row) => [
          this.tables.partitionName(this.tables.names[row.t], row.slot_id),
          row.rows,
        ]),
      ),
      sizes: new Map(sized.rows.map(({ oid, ...size }) => [oid, size])),
    };
  }
}

/** For a statistics session only (see session and countAndSize). */
const SERIAL_PLAN = `SELECT set_config('max_parallel_workers_per_gather', '0', false),
                            set_config('jit', 'off', false)`;

/**
 * Slot tables per countAndSize: its statements lock each table, its primary key, HNSW index,
 * TOAST table and TOAST index until they end.
 */
export const MEASURE_CHUNK = 64;
