import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Inject, Injectable } from '@nestjs/common';
import { ClientBase, Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { PG_POOL } from '../../database/database.constants';
import { withTransactionOn } from '../../database/transaction';
import { VectorTables } from '../vector-tables';
import { COPY_COLUMNS } from './binary-copy';

/**
 * First key of the session advisory lock an import holds on its lock key while it runs (the
 * second is vector_imports.lock_key), on its own connection: Postgres releases it the moment
 * that connection closes, a crashed process included, so a dead import reads as abandoned at
 * once. (Distinct from REBUILD_SESSION_LOCK.)
 */
export const IMPORT_SESSION_LOCK = 0x76656332;

/** True when no session holds the import lock of `keySql` (an SQL expression). */
const importGone = (keySql: string) => `NOT EXISTS (
  SELECT 1 FROM pg_locks l
  WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ${IMPORT_SESSION_LOCK}::oid AND l.objid = (${keySql})::oid)`;

const RUNNING = `('receiving', 'loading', 'indexing', 'switching')`;

export type ImportStatus =
  'receiving' | 'loading' | 'indexing' | 'switching' | 'succeeded' | 'failed' | 'abandoned';

export interface ImportRecord {
  id: string;
  lock_key: number;
  namespace: string;
  table_name: string;
}

export interface ImportProgress {
  id: string;
  namespace: string;
  table_name: string;
  /** `abandoned`: still marked running, but the process that ran it is gone. */
  status: ImportStatus;
  mode: 'merge' | 'slot' | null;
  lines: number;
  rows: number;
  embedded: number;
  slot: number | null;
  error: string | null;
  started_at: Date;
  updated_at: Date;
  finished_at: Date | null;
}

const PROGRESS_COLUMNS = `i.id::text AS id, i.namespace, i.table_name,
  CASE WHEN i.status IN ${RUNNING} AND ${importGone('i.lock_key')} THEN 'abandoned'
       ELSE i.status END AS status,
  i.mode, i.lines::int AS lines, i.rows::int AS rows, i.embedded::int AS embedded, i.slot,
  i.error, i.started_at, i.updated_at, i.finished_at`;

/** Streamed imports: their progress rows (vector_imports) and their staging tables. */
@Injectable()
export class ImportRepository {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly tables: VectorTables,
  ) {}

  /**
   * On the import's own connection, in one transaction: the progress row, the session lock on
   * its key (held after commit, until the connection ends) and the empty staging table. Nobody
   * sees the row before the lock is held. Null when the id is taken.
   */
  async begin(
    session: ClientBase,
    id: string,
    namespace: string,
    table: string,
  ): Promise<ImportRecord | null> {
    return withTransactionOn(session, async (client) => {
      const { rows } = await client.query<ImportRecord>(
        `INSERT INTO vector_imports (id, namespace, table_name, status)
         VALUES ($1, $2, $3, 'receiving') ON CONFLICT (id) DO NOTHING
         RETURNING id::text AS id, lock_key, namespace, table_name`,
        [id, namespace, table],
      );
      const record = rows[0];
      if (!record) return null;
      await client.query('SELECT pg_advisory_lock($1, $2)', [IMPORT_SESSION_LOCK, record.lock_key]);
      // No primary key, no index: the cheapest table to COPY into. Unlogged: it is rebuilt from
      // the request if anything goes wrong, never recovered.
      await client.query(
        `CREATE UNLOGGED TABLE ${this.staging(record)}
         (LIKE ${this.tables.parent(table)} INCLUDING DEFAULTS)`,
      );
      return record;
    });
  }

  staging(record: ImportRecord): string {
    return this.tables.importStaging(record.table_name, record.lock_key);
  }

  /** Binary COPY of an encoded tuple stream (header to trailer) into the staging table. */
  async copyIntoStaging(
    session: ClientBase,
    record: ImportRecord,
    tuples: AsyncIterable<Buffer>,
  ): Promise<void> {
    const copy = session.query(
      copyFrom(`COPY ${this.staging(record)} (${COPY_COLUMNS}) FROM STDIN (FORMAT binary)`),
    );
    await pipeline(Readable.from(tuples, { objectMode: false }), copy);
  }

  /**
   * The staged rows into one slot (or its side table), on the caller's transaction, in obj_ref
   * order like every other writer (no deadlocks between them). `replace`: the rows overwrite
   * what is there (a merge into the active slot, stamped with the epoch like an upsert); else
   * rows already there win (a new slot, where they come from upserts made since it began).
   */
  async copyStaged(
    client: ClientBase,
    record: ImportRecord,
    into: string,
    slotId: number,
    epoch: number,
    replace: boolean,
  ): Promise<number> {
    // The sort carries whole rows (vectors included): in memory it is a fraction of the cost.
    await client.query(`SET LOCAL work_mem = '256MB'`);
    const result = await client.query(
      `INSERT INTO ${into} (${COPY_COLUMNS}, write_epoch)
       SELECT $1, obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source,
              model, $2
       FROM ${this.staging(record)} ORDER BY obj_ref
       ON CONFLICT (slot_id, obj_ref) DO ${
         replace
           ? `UPDATE SET
         item_id = EXCLUDED.item_id, content = EXCLUDED.content,
         content_hash = EXCLUDED.content_hash, metadata = EXCLUDED.metadata,
         embedding = EXCLUDED.embedding, embedding_source = EXCLUDED.embedding_source,
         model = EXCLUDED.model, write_epoch = EXCLUDED.write_epoch, updated_at = now()`
           : 'NOTHING'
       }`,
      [slotId, epoch],
    );
    return result.rowCount ?? 0;
  }

  /** The planner's row estimate of a slot's tables together (0 for never-analysed ones). */
  async estimatedSlotRows(slotId: number): Promise<number> {
    const { rows } = await this.pool.query<{ rows: number }>(
      `SELECT COALESCE(sum(GREATEST(reltuples, 0)), 0)::float8 AS rows FROM pg_class
       WHERE oid = ANY (SELECT to_regclass(name) FROM unnest($1::text[]) AS name)`,
      [this.tables.names.map((table) => this.tables.partitionName(table, slotId))],
    );
    return rows[0].rows;
  }

  async dropStaging(db: Pool | ClientBase, record: ImportRecord): Promise<void> {
    await db.query(`DROP TABLE IF EXISTS ${this.staging(record)}`);
    await db.query('UPDATE vector_imports SET staging_dropped = true WHERE id = $1', [record.id]);
  }

  async update(
    id: string,
    update: Partial<
      Pick<ImportProgress, 'status' | 'mode' | 'lines' | 'rows' | 'embedded' | 'slot' | 'error'>
    >,
  ): Promise<void> {
    await this.pool.query(
      `UPDATE vector_imports SET
         status = COALESCE($2, status), mode = COALESCE($3, mode),
         lines = COALESCE($4, lines), rows = COALESCE($5, rows),
         embedded = COALESCE($6, embedded), slot = COALESCE($7, slot),
         error = COALESCE($8, error), updated_at = now(),
         finished_at = CASE WHEN $2 IN ('succeeded', 'failed', 'abandoned') THEN now()
                            ELSE finished_at END
       WHERE id = $1`,
      [
        id,
        update.status ?? null,
        update.mode ?? null,
        update.lines ?? null,
        update.rows ?? null,
        update.embedded ?? null,
        update.slot ?? null,
        update.error ?? null,
      ],
    );
  }

  async find(id: string): Promise<ImportProgress | null> {
    const { rows } = await this.pool.query<ImportProgress>(
      `SELECT ${PROGRESS_COLUMNS} FROM vector_imports i WHERE i.id = $1`,
      [id],
    );
    return rows[0] ?? null;
  }

  async latest(namespace: string): Promise<ImportProgress | null> {
    const { rows } = await this.pool.query<ImportProgress>(
      `SELECT ${PROGRESS_COLUMNS} FROM vector_imports i
       WHERE i.namespace = $1 ORDER BY i.started_at DESC, i.lock_key DESC LIMIT 1`,
      [namespace],
    );
    return rows[0] ?? null;
  }

  /**
   * Imports whose connection is gone (a crash, a cut connection, or simply finished) and whose
   * staging table has not been dropped yet: those still marked running are recorded abandoned
   * (`abandoned` true), and the caller drops their staging tables.
   */
  async orphans(): Promise<(ImportRecord & { mode: string | null; abandoned: boolean })[]> {
    const { rows } = await this.pool.query<
      ImportRecord & { mode: string | null; abandoned: boolean }
    >(
      `WITH gone AS (
         SELECT id, status IN ${RUNNING} AS abandoned FROM vector_imports i
         WHERE NOT staging_dropped AND ${importGone('i.lock_key')}
         FOR UPDATE SKIP LOCKED
       )
       UPDATE vector_imports i SET
         status = CASE WHEN gone.abandoned THEN 'abandoned' ELSE i.status END,
         error = CASE WHEN gone.abandoned
                      THEN 'the import''s process or connection ended before it finished'
                      ELSE i.error END,
         finished_at = COALESCE(i.finished_at, now()), updated_at = now()
       FROM gone WHERE i.id = gone.id
       RETURNING i.id::text AS id, i.lock_key, i.namespace, i.table_name, i.mode, gone.abandoned`,
    );
    return rows;
  }
}
