import { Inject, Injectable } from '@nestjs/common';
import { ClientBase, Pool, PoolClient } from 'pg';
import { PG_POOL } from '../../database/database.constants';
import { DedicatedConnections } from '../../database/dedicated-connections';
import { withTransaction } from '../../database/transaction';
import { VectorTables } from '../vector-tables';

export interface IndexSettings {
  m: number;
  efConstruction: number;
  /** e.g. `1GB`: HNSW builds are several times faster when the graph fits in memory. */
  maintenanceWorkMem: string;
  /** False on pgvector < 0.8.2, whose parallel HNSW build can overflow. */
  parallel: boolean;
}

export interface IndexState {
  exists: boolean;
  valid: boolean;
}

const ITEM_COLUMNS = `
  slot_id          bigint      NOT NULL,
  obj_ref          text        NOT NULL,
  item_id          text,
  content          text        NOT NULL,
  content_hash     bytea       NOT NULL,
  metadata         jsonb,
  embedding        vector      NOT NULL,
  embedding_source text        NOT NULL,
  model            text,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  write_epoch      bigint      NOT NULL DEFAULT 0`;

/**
 * DDL of the item tables: one parent per registered table partitioned by slot id, one
 * partition per slot with a dimension check, an HNSW cosine index on `embedding::vector(D)` and
 * a GIN index on `metadata jsonb_path_ops` (for filtered searches).
 */
@Injectable()
export class VectorSchemaRepository {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly tables: VectorTables,
    private readonly connections: DedicatedConnections,
  ) {}

  transaction<T>(work: (client: PoolClient) => Promise<T>): Promise<T> {
    return withTransaction(this.pool, work);
  }

  /** Creates missing parents (idempotent; the caller serialises replicas). */
  async ensureParents(): Promise<void> {
    for (const table of this.tables.names) {
      await this.pool.query(
        `CREATE TABLE IF NOT EXISTS ${this.tables.parent(table)} (${ITEM_COLUMNS},
           PRIMARY KEY (slot_id, obj_ref)
         ) PARTITION BY LIST (slot_id)`,
      );
      // Added after the first release; reaches every attached partition. Looked up first:
      // ALTER TABLE takes an exclusive lock even when there is nothing to add.
      const { rowCount } = await this.pool.query(
        `SELECT 1 FROM pg_attribute
         WHERE attrelid = to_regclass($1) AND attname = 'write_epoch' AND NOT attisdropped`,
        [`vec_${table}`],
      );
      if (rowCount === 0) {
        await this.pool.query(
          `ALTER TABLE ${this.tables.parent(table)}
           ADD COLUMN IF NOT EXISTS write_epoch bigint NOT NULL DEFAULT 0`,
        );
      }
    }
  }

  /**
   * Creates the slot's table for every registered table. Attached at once for a new namespace;
   * a rebuild loads it standalone and attaches it when its index is built.
   */
  async createSlotTables(
    client: ClientBase,
    slotId: number,
    dimension: number,
    attach: boolean,
  ): Promise<void> {
    for (const table of this.tables.names) {
      const partition = this.tables.partition(table, slotId);
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${partition} (${ITEM_COLUMNS},
           PRIMARY KEY (slot_id, obj_ref),
           CHECK (slot_id = ${slotId}),
           CHECK (vector_dims(embedding) = ${dimensionOf(dimension)})
         )`,
      );
      if (attach) await this.attach(client, table, slotId);
    }
  }

  async isAttached(
    table: string,
    slotId: number,
    db: Pool | ClientBase = this.pool,
  ): Promise<boolean> {
    const { rows } = await db.query(
      `SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace`,
      [this.tables.partitionName(table, slotId)],
    );
    return rows.length > 0;
  }

  async attach(client: ClientBase, table: string, slotId: number): Promise<void> {
    if (await this.isAttached(table, slotId, client)) return;
    // The CHECK (slot_id = id) constraint lets Postgres skip the validation scan.
    await client.query(
      `ALTER TABLE ${this.tables.parent(table)} ATTACH PARTITION ${this.tables.partition(table, slotId)}
       FOR VALUES IN (${slotId})`,
    );
  }

  /** Detaches (if attached) and drops a slot's table: no dead tuples left for HNSW to vacuum. */
  async dropSlotTable(client: ClientBase, table: string, slotId: number): Promise<void> {
    if (await this.isAttached(table, slotId, client)) {
      await client.query(
        `ALTER TABLE ${this.tables.parent(table)} DETACH PARTITION ${this.tables.partition(table, slotId)}`,
      );
    }
    await client.query(`DROP TABLE IF EXISTS ${this.tables.partition(table, slotId)}`);
    await client.query(`DROP TABLE IF EXISTS ${this.tables.staging(table, slotId)}`);
    await client.query(`DROP TABLE IF EXISTS ${this.tables.delta(table, slotId)}`);
  }

  async slotTableExists(table: string, slotId: number): Promise<boolean> {
    const { rows } = await this.pool.query('SELECT to_regclass($1) IS NOT NULL AS exists', [
      this.tables.partitionName(table, slotId),
    ]);
    return (rows[0] as { exists: boolean }).exists;
  }

  async indexState(table: string, slotId: number): Promise<IndexState> {
    return this.indexStateOf(`${this.tables.partitionName(table, slotId)}_hnsw`);
  }

  /** The slot's metadata GIN index (see VectorTables.metadataIndex). */
  async metadataIndexState(table: string, slotId: number): Promise<IndexState> {
    return this.indexStateOf(this.tables.metadataIndexName(table, slotId));
  }

  private async indexStateOf(name: string): Promise<IndexState> {
    const { rows } = await this.pool.query<{ valid: boolean }>(
      `SELECT i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
       WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace`,
      [name],
    );
    return { exists: rows.length > 0, valid: rows[0]?.valid ?? false };
  }

  /**
   * Builds the slot's HNSW index and its metadata GIN index, each unless a valid one exists; an
   * invalid one (a build that was interrupted) is dropped first. CONCURRENTLY by default, so
   * upserts into the slot go on meanwhile; a rebuild builds its new slot's indexes plainly
   * (faster: one pass, no validation scan), after loading, having sent upserts to the slot's
   * side tables for that time. On the caller's connection (`on`), or one of its own outside the
   * pool (a build takes seconds to minutes, and several at once must not starve the requests),
   * ended afterwards with its settings. Slots made before filtered search get their GIN index
   * here, at start-up (IndexMaintenance).
   */
  async ensureIndex(
    table: string,
    slotId: number,
    dimension: number,
    settings: IndexSettings,
    { concurrently = true, on }: { concurrently?: boolean; on?: ClientBase } = {},
  ): Promise<'exists' | 'created'> {
    const hnsw = await this.indexState(table, slotId);
    const metadata = await this.metadataIndexState(table, slotId);
    if (hnsw.valid && metadata.valid) return 'exists';
    const own = on ? undefined : await this.connections.open('index-build');
    const client: ClientBase = on ?? own!;
    const partition = this.tables.partition(table, slotId);
    const mode = concurrently ? 'CONCURRENTLY' : '';
    try {
      await client.query('SELECT set_config($1, $2, false)', [
        'maintenance_work_mem',
        settings.maintenanceWorkMem,
      ]);
      if (!settings.parallel) await client.query('SET max_parallel_maintenance_workers = 0');
      if (!hnsw.valid) {
        const index = this.tables.index(table, slotId);
        if (hnsw.exists) await client.query(`DROP INDEX CONCURRENTLY IF EXISTS ${index}`);
        await client.query(
          `CREATE INDEX ${mode} IF NOT EXISTS ${index} ON ${partition}
           USING hnsw ((embedding::vector(${dimensionOf(dimension)})) vector_cosine_ops)
           WITH (m = ${Math.trunc(settings.m)}, ef_construction = ${Math.trunc(settings.efConstruction)})`,
        );
      }
      if (!metadata.valid) {
        const index = this.tables.metadataIndex(table, slotId);
        if (metadata.exists) await client.query(`DROP INDEX CONCURRENTLY IF EXISTS ${index}`);
        await client.query(
          `CREATE INDEX ${mode} IF NOT EXISTS ${index} ON ${partition}
           USING gin (metadata jsonb_path_ops)`,
        );
      }
      await client.query(`ANALYZE ${partition}`);
      return 'created';
    } finally {
      if (own) await own.end().catch(() => undefined);
      else {
        await client
          .query('RESET maintenance_work_mem; RESET max_parallel_maintenance_workers')
          .catch(() => undefined);
      }
    }
  }

  /** The indexes of a new, empty slot table, inside the creating transaction (instant). */
  async createEmptyIndex(
    client: PoolClient,
    table: string,
    slotId: number,
    dimension: number,
    settings: IndexSettings,
  ): Promise<void> {
    await client.query(
      `CREATE INDEX IF NOT EXISTS ${this.tables.index(table, slotId)} ON ${this.tables.partition(table, slotId)}
       USING hnsw ((embedding::vector(${dimensionOf(dimension)})) vector_cosine_ops)
       WITH (m = ${Math.trunc(settings.m)}, ef_construction = ${Math.trunc(settings.efConstruction)})`,
    );
    await client.query(
      `CREATE INDEX IF NOT EXISTS ${this.tables.metadataIndex(table, slotId)}
       ON ${this.tables.partition(table, slotId)} USING gin (metadata jsonb_path_ops)`,
    );
  }

  /** The building slot's side table for upserts during its index build (see VectorTables.delta). */
  async createDelta(
    client: ClientBase,
    table: string,
    slotId: number,
    dimension: number,
  ): Promise<void> {
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${this.tables.delta(table, slotId)} (${ITEM_COLUMNS},
         PRIMARY KEY (slot_id, obj_ref),
         CHECK (slot_id = ${slotId}),
         CHECK (vector_dims(embedding) = ${dimensionOf(dimension)})
       )`,
    );
  }

  async createStaging(client: ClientBase, table: string, slotId: number): Promise<void> {
    await client.query(`DROP TABLE IF EXISTS ${this.tables.staging(table, slotId)}`);
    await client.query(
      `CREATE UNLOGGED TABLE ${this.tables.staging(table, slotId)} (${ITEM_COLUMNS})`,
    );
  }
}

function dimensionOf(dimension: number): number {
  if (!Number.isInteger(dimension) || dimension < 1 || dimension > 16000) {
    throw new Error(`bad dimension ${dimension}`);
  }
  return dimension;
}
