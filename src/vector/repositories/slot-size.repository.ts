import { Inject, Injectable } from '@nestjs/common';
import { Pool } from 'pg';
import { PG_POOL } from '../../database/database.constants';
import { VectorTables } from '../vector-tables';

/** Catalog estimates of slot sizes, for metrics: never a scan of the items themselves. */
@Injectable()
export class SlotSizeRepository {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly tables: VectorTables,
  ) {}

  /**
   * Rows in the active slots of all namespaces, per table, from pg_class.reltuples (what the
   * last ANALYZE or autovacuum saw; -1, counted as 0, for a table never analysed). One statement
   * whatever the number of namespaces.
   */
  async activeSlotRowEstimates(): Promise<Map<string, number>> {
    const tables = this.tables.names;
    const { rows } = await this.pool.query<{ table_name: string; estimate: string }>(
      `SELECT t.table_name, coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint::text AS estimate
       FROM unnest($1::text[]) AS t(table_name)
       LEFT JOIN (vector_namespaces n
                  JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.active_slot)
         ON true
       LEFT JOIN pg_class c
         ON c.relname = 'vec_' || t.table_name || '_s' || s.id
        AND c.relnamespace = current_schema()::regnamespace
       GROUP BY t.table_name`,
      [tables],
    );
    return new Map(rows.map((row) => [row.table_name, Number(row.estimate)]));
  }
}
