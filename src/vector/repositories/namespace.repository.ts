import { Inject, Injectable } from '@nestjs/common';
import { ClientBase, Pool } from 'pg';
import { PG_POOL } from '../../database/database.constants';
import { NamespaceRow, RebuildProgress, SlotRow, WriteTargets } from '../vector.types';

type Queryable = Pool | ClientBase;

const SLOT_COLUMNS =
  'id::int AS id, namespace, slot, model, dimension, status, created_at, activated_at';
const NAMESPACE_COLUMNS =
  'namespace, active_slot, building_slot, building_indexing, previous_slot, epoch::int AS epoch';

/**
 * First key of the session advisory lock a rebuild holds on its slot id while it lives (the
 * second is the slot id). Postgres releases it the moment the rebuild's connection closes — a
 * crashed process included — which is how upserts and progress tell a live rebuild from a
 * dead one without waiting for any lease.
 */
export const REBUILD_SESSION_LOCK = 0x76656331;

/** True when no session holds the rebuild lock of slot `slotIdSql` (an SQL expression). */
const rebuildGone = (slotIdSql: string) => `NOT EXISTS (
  SELECT 1 FROM pg_locks l
  WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ${REBUILD_SESSION_LOCK}::oid AND l.objid = (${slotIdSql})::oid)`;

interface WriteTargetRow extends NamespaceRow {
  active: SlotRow;
  building: SlotRow | null;
  building_live: boolean;
}

/** The namespace and slot catalog (vector_namespaces, vector_slots, vector_rebuilds). */
@Injectable()
export class NamespaceRepository {
  constructor(@Inject(PG_POOL) private readonly pool: Pool) {}

  async find(namespace: string, db: Queryable = this.pool): Promise<NamespaceRow | null> {
    const { rows } = await db.query<NamespaceRow>(
      `SELECT ${NAMESPACE_COLUMNS} FROM vector_namespaces WHERE namespace = $1`,
      [namespace],
    );
    return rows[0] ?? null;
  }

  /**
   * In an upsert's transaction, one round trip: the namespace row FOR SHARE (a rebuild's switch,
   * FOR UPDATE, waits for in-flight upserts), its active slot, and its building slot if the
   * rebuild loading it is alive. A rebuild holds a session advisory lock on its slot id; when
   * its process or connection dies the lock is gone, and upserts stop writing a slot that will
   * never be switched to (that rebuild can no longer switch: it switches on that connection).
   * When the lock had to wait for a switch, the joined slots may be stale; see below. (A switch
   * that moved the active slot makes the join fail outright: no row, and the caller's
   * create-or-read path reads again.)
   */
  async lockForWrite(
    client: ClientBase,
    namespace: string,
    retried = false,
  ): Promise<WriteTargets | null> {
    const { rows } = await client.query<WriteTargetRow>(
      `SELECT n.namespace, n.active_slot, n.building_slot, n.building_indexing, n.previous_slot,
              n.epoch::int AS epoch,
              json_build_object('id', a.id, 'namespace', a.namespace, 'slot', a.slot,
                'model', a.model, 'dimension', a.dimension, 'status', a.status) AS active,
              CASE WHEN b.id IS NOT NULL THEN json_build_object('id', b.id,
                'namespace', b.namespace, 'slot', b.slot, 'model', b.model,
                'dimension', b.dimension, 'status', b.status) END AS building,
              b.id IS NOT NULL
                AND NOT pg_try_advisory_xact_lock_shared(${REBUILD_SESSION_LOCK}, b.id::int)
                AS building_live
       FROM vector_namespaces n
       JOIN vector_slots a ON a.namespace = n.namespace AND a.slot = n.active_slot
       LEFT JOIN vector_slots b ON b.namespace = n.namespace AND b.slot = n.building_slot
       WHERE n.namespace = $1
       FOR SHARE OF n`,
      [namespace],
    );
    const row = rows[0];
    if (!row) return null;
    const { active, building, building_live, ...namespaceRow } = row;
    if (active.slot !== row.active_slot || (building?.slot ?? null) !== row.building_slot) {
      // The row lock waited for a switch or a rebuild's start, and Postgres rechecked the new
      // version of the namespace row against slot rows joined from the statement's snapshot
      // (EvalPlanQual rechecks the locked row, not the join): those are stale. Read again,
      // now that the lock is held — a new statement sees the committed change.
      if (retried) throw new Error(`the slots of ${namespace} changed under a held row lock`);
      return this.lockForWrite(client, namespace, true);
    }
    return { namespace: namespaceRow, active, building: building_live ? building : null };
  }

  /** Exclusive: waits for in-flight upserts, and holds new ones until commit. */
  async lockForSwitch(client: ClientBase, namespace: string): Promise<NamespaceRow | null> {
    const { rows } = await client.query<NamespaceRow>(
      `SELECT ${NAMESPACE_COLUMNS} FROM vector_namespaces WHERE namespace = $1 FOR UPDATE`,
      [namespace],
    );
    return rows[0] ?? null;
  }

  /** Creates the namespace with slot 1 active unless it exists; returns true if created here. */
  async create(client: ClientBase, namespace: string, model: string, dimension: number) {
    const created = await client.query(
      `INSERT INTO vector_namespaces (namespace, active_slot, last_slot) VALUES ($1, 1, 1)
       ON CONFLICT (namespace) DO NOTHING`,
      [namespace],
    );
    if (created.rowCount === 0) return null;
    return this.createSlot(client, namespace, 1, model, dimension, 'active');
  }

  async createSlot(
    client: ClientBase,
    namespace: string,
    slot: number,
    model: string,
    dimension: number,
    status: SlotRow['status'],
  ): Promise<SlotRow> {
    const { rows } = await client.query<SlotRow>(
      `INSERT INTO vector_slots (namespace, slot, model, dimension, status, activated_at)
       VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 = 'active' THEN now() END)
       RETURNING ${SLOT_COLUMNS}`,
      [namespace, slot, model, dimension, status],
    );
    return rows[0];
  }

  async slot(namespace: string, slot: number, db: Queryable = this.pool): Promise<SlotRow | null> {
    const { rows } = await db.query<SlotRow>(
      `SELECT ${SLOT_COLUMNS} FROM vector_slots WHERE namespace = $1 AND slot = $2`,
      [namespace, slot],
    );
    return rows[0] ?? null;
  }

  async slots(namespace?: string, db: Queryable = this.pool): Promise<SlotRow[]> {
    const { rows } = await db.query<SlotRow>(
      `SELECT ${SLOT_COLUMNS} FROM vector_slots
       WHERE $1::text IS NULL OR namespace = $1 ORDER BY namespace, slot`,
      [namespace ?? null],
    );
    return rows;
  }

  async namespaces(db: Queryable = this.pool): Promise<NamespaceRow[]> {
    const { rows } = await db.query<NamespaceRow>(
      `SELECT ${NAMESPACE_COLUMNS} FROM vector_namespaces ORDER BY namespace`,
    );
    return rows;
  }

  /** The next slot number of the namespace; numbers only grow, even past dropped slots. */
  async allocateSlotNumber(client: ClientBase, namespace: string): Promise<number> {
    const { rows } = await client.query<{ slot: number }>(
      `UPDATE vector_namespaces SET last_slot = last_slot + 1, updated_at = now()
       WHERE namespace = $1 RETURNING last_slot AS slot`,
      [namespace],
    );
    return rows[0].slot;
  }

  async setBuilding(client: ClientBase, namespace: string, slot: number): Promise<void> {
    await client.query(
      `UPDATE vector_namespaces SET building_slot = $2, building_indexing = false, updated_at = now()
       WHERE namespace = $1`,
      [namespace, slot],
    );
  }

  /**
   * From now until the switch, upserts write their copy for the building slot to its side
   * tables (see VectorService.write), so that its index can be built without CONCURRENTLY.
   * Under the namespace row FOR UPDATE: upserts in flight have finished writing the slot.
   */
  async setBuildingIndexing(client: ClientBase, namespace: string): Promise<void> {
    await client.query(
      'UPDATE vector_namespaces SET building_indexing = true, updated_at = now() WHERE namespace = $1',
      [namespace],
    );
  }

  /**
   * Makes `slot` active; the old active one becomes the previous (kept for rollback). The epoch
   * moves on, so rows written from now on are told apart from those written before.
   */
  async activate(client: ClientBase, namespace: string, slot: number): Promise<void> {
    await client.query(
      `UPDATE vector_slots SET status = 'retired', retired_at = now()
       WHERE namespace = $1 AND status = 'active' AND slot <> $2`,
      [namespace, slot],
    );
    await client.query(
      `UPDATE vector_slots SET status = 'active', activated_at = now(), retired_at = NULL
       WHERE namespace = $1 AND slot = $2`,
      [namespace, slot],
    );
    await client.query(
      `UPDATE vector_namespaces
       SET previous_slot = active_slot, active_slot = $2, epoch = epoch + 1,
           building_slot = CASE WHEN building_slot = $2 THEN NULL ELSE building_slot END,
           building_indexing = building_indexing AND building_slot IS DISTINCT FROM $2,
           updated_at = now()
       WHERE namespace = $1`,
      [namespace, slot],
    );
  }

  /** Deletes one slot row by id, and the namespace's references to it. */
  async deleteSlot(client: ClientBase, slot: SlotRow): Promise<void> {
    await client.query('DELETE FROM vector_slots WHERE id = $1', [slot.id]);
    await client.query(
      `UPDATE vector_namespaces SET
         previous_slot = CASE WHEN previous_slot = $2 THEN NULL ELSE previous_slot END,
         building_slot = CASE WHEN building_slot = $2 THEN NULL ELSE building_slot END,
         building_indexing = building_indexing AND building_slot IS DISTINCT FROM $2
       WHERE namespace = $1 AND (previous_slot = $2 OR building_slot = $2)`,
      [slot.namespace, slot.slot],
    );
  }

  /** The namespace row (its slots cascade) and its rebuild history. */
  async deleteNamespace(client: ClientBase, namespace: string): Promise<void> {
    await client.query('DELETE FROM vector_rebuilds WHERE namespace = $1', [namespace]);
    await client.query('DELETE FROM vector_namespaces WHERE namespace = $1', [namespace]);
  }

  /**
   * Session-level: held by the rebuild's own connection until that connection ends (see
   * REBUILD_SESSION_LOCK). A slot id is never reused, so nobody else ever asks.
   */
  async holdRebuildSession(client: ClientBase, slotId: number): Promise<void> {
    await client.query('SELECT pg_advisory_lock($1, $2)', [REBUILD_SESSION_LOCK, slotId]);
  }

  async startRebuild(client: ClientBase, slot: SlotRow, fence: number): Promise<number> {
    const { rows } = await client.query<{ id: number }>(
      `INSERT INTO vector_rebuilds (namespace, slot, slot_id, fence, status, phase)
       VALUES ($1, $2, $3, $4, 'running', 'preparing') RETURNING id::int AS id`,
      [slot.namespace, slot.slot, slot.id, fence],
    );
    return rows[0].id;
  }

  async updateRebuild(
    id: number,
    update: Partial<
      Pick<
        RebuildProgress,
        'status' | 'phase' | 'processed' | 'total' | 'embedded' | 'reused' | 'error'
      >
    >,
  ): Promise<void> {
    await this.pool.query(
      `UPDATE vector_rebuilds SET
         status = COALESCE($2, status), phase = COALESCE($3, phase),
         processed = COALESCE($4, processed), total = COALESCE($5, total),
         embedded = COALESCE($6, embedded), reused = COALESCE($7, reused),
         error = COALESCE($8, error), updated_at = now(),
         finished_at = CASE WHEN $2 IN ('succeeded', 'failed', 'abandoned') THEN now()
                            ELSE finished_at END
       WHERE id = $1`,
      [
        id,
        update.status ?? null,
        update.phase ?? null,
        update.processed ?? null,
        update.total ?? null,
        update.embedded ?? null,
        update.reused ?? null,
        update.error ?? null,
      ],
    );
  }

  /** The latest rebuild; one still marked running whose process is gone reads as abandoned. */
  async latestRebuild(namespace: string): Promise<RebuildProgress | null> {
    const { rows } = await this.pool.query<RebuildProgress>(
      `SELECT r.namespace, r.slot,
              CASE WHEN r.status = 'running' AND r.slot_id IS NOT NULL
                        AND ${rebuildGone('r.slot_id')}
                   THEN 'abandoned' ELSE r.status END AS status,
              r.phase, r.processed::int AS processed, r.total::int AS total,
              r.embedded::int AS embedded, r.reused::int AS reused, r.error, r.started_at,
              r.updated_at, r.finished_at
       FROM vector_rebuilds r WHERE r.namespace = $1 ORDER BY r.id DESC LIMIT 1`,
      [namespace],
    );
    return rows[0] ?? null;
  }

  /** The latest rebuild's id and lock fence, when it reads as abandoned (see latestRebuild). */
  async abandonedRebuild(
    namespace: string,
  ): Promise<{ id: number; slot: number; fence: number | null } | null> {
    const { rows } = await this.pool.query<{ id: number; slot: number; fence: number | null }>(
      `SELECT r.id::int AS id, r.slot, r.fence::float8 AS fence
       FROM (SELECT * FROM vector_rebuilds WHERE namespace = $1 ORDER BY id DESC LIMIT 1) r
       WHERE r.status = 'running' AND r.slot_id IS NOT NULL AND ${rebuildGone('r.slot_id')}`,
      [namespace],
    );
    return rows[0] ?? null;
  }

  /**
   * Records a rebuild as abandoned unless it finished (or was recorded abandoned) meanwhile;
   * true for the one caller that did.
   */
  async markAbandoned(id: number): Promise<boolean> {
    const { rowCount } = await this.pool.query(
      `UPDATE vector_rebuilds SET status = 'abandoned', updated_at = now(), finished_at = now()
       WHERE id = $1 AND status = 'running'`,
      [id],
    );
    return rowCount === 1;
  }

  /** Under the rebuild lock, in a fenced transaction: no earlier rebuild can still be running. */
  async abandonRunningRebuilds(client: ClientBase, namespace: string): Promise<void> {
    await client.query(
      `UPDATE vector_rebuilds SET status = 'abandoned', updated_at = now(), finished_at = now()
       WHERE namespace = $1 AND status = 'running'`,
      [namespace],
    );
  }

  /** Marks a slot that will never become active (a superseded or dead rebuild's). */
  async retire(client: ClientBase, slot: SlotRow): Promise<void> {
    await client.query(
      `UPDATE vector_slots SET status = 'retired', retired_at = now() WHERE id = $1`,
      [slot.id],
    );
  }
}
