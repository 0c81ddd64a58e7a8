import { Inject, Injectable } from '@nestjs/common';
import { Pool, PoolClient } from 'pg';
import { PG_POOL } from '../../database/database.constants';
import { NamespaceRow, RebuildProgress, SlotRow } from '../vector.types';

type Queryable = Pool | PoolClient;

const SLOT_COLUMNS =
  'id::int AS id, namespace, slot, model, dimension, status, created_at, activated_at';

/** The namespace and slot catalog (vector_namespaces, vector_slots, vector_rebuilds). */
@Injectable()
export class NamespaceRepository {
  constructor(@Inject(PG_POOL) private readonly pool: Pool) {}

  async find(namespace: string, db: Queryable = this.pool): Promise<NamespaceRow | null> {
    const { rows } = await db.query<NamespaceRow>(
      'SELECT namespace, active_slot, building_slot, previous_slot FROM vector_namespaces WHERE namespace = $1',
      [namespace],
    );
    return rows[0] ?? null;
  }

  /**
   * In an upsert's transaction: the namespace row FOR SHARE, so a rebuild's switch (FOR UPDATE)
   * waits for in-flight upserts, and upserts see the building slot once a rebuild has begun.
   */
  async lockForWrite(client: PoolClient, namespace: string): Promise<NamespaceRow | null> {
    const { rows } = await client.query<NamespaceRow>(
      'SELECT namespace, active_slot, building_slot, previous_slot FROM vector_namespaces WHERE namespace = $1 FOR SHARE',
      [namespace],
    );
    return rows[0] ?? null;
  }

  /** Exclusive: waits for in-flight upserts, and holds new ones until commit. */
  async lockForSwitch(client: PoolClient, namespace: string): Promise<NamespaceRow | null> {
    const { rows } = await client.query<NamespaceRow>(
      'SELECT namespace, active_slot, building_slot, previous_slot FROM vector_namespaces WHERE namespace = $1 FOR UPDATE',
      [namespace],
    );
    return rows[0] ?? null;
  }

  /** Creates the namespace with slot 1 active unless it exists; returns true if created here. */
  async create(client: PoolClient, namespace: string, model: string, dimension: number) {
    const created = await client.query(
      `INSERT INTO vector_namespaces (namespace, active_slot) VALUES ($1, 1)
       ON CONFLICT (namespace) DO NOTHING`,
      [namespace],
    );
    if (created.rowCount === 0) return null;
    return this.createSlot(client, namespace, 1, model, dimension, 'active');
  }

  async createSlot(
    client: PoolClient,
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
      'SELECT namespace, active_slot, building_slot, previous_slot FROM vector_namespaces ORDER BY namespace',
    );
    return rows;
  }

  async nextSlotNumber(client: PoolClient, namespace: string): Promise<number> {
    const { rows } = await client.query<{ next: number }>(
      'SELECT COALESCE(max(slot), 0) + 1 AS next FROM vector_slots WHERE namespace = $1',
      [namespace],
    );
    return rows[0].next;
  }

  async setBuilding(client: PoolClient, namespace: string, slot: number | null): Promise<void> {
    await client.query(
      'UPDATE vector_namespaces SET building_slot = $2, updated_at = now() WHERE namespace = $1',
      [namespace, slot],
    );
  }

  /** Makes `slot` active; the old active one becomes the previous (kept for rollback). */
  async activate(client: PoolClient, namespace: string, slot: number): Promise<void> {
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
       SET previous_slot = active_slot, active_slot = $2,
           building_slot = CASE WHEN building_slot = $2 THEN NULL ELSE building_slot END,
           updated_at = now()
       WHERE namespace = $1`,
      [namespace, slot],
    );
  }

  async retire(client: PoolClient, namespace: string, slot: number): Promise<void> {
    await client.query(
      `UPDATE vector_slots SET status = 'retired', retired_at = now() WHERE namespace = $1 AND slot = $2`,
      [namespace, slot],
    );
  }

  async deleteSlot(client: PoolClient, namespace: string, slot: number): Promise<void> {
    await client.query('DELETE FROM vector_slots WHERE namespace = $1 AND slot = $2', [
      namespace,
      slot,
    ]);
    await client.query(
      'UPDATE vector_namespaces SET previous_slot = NULL WHERE namespace = $1 AND previous_slot = $2',
      [namespace, slot],
    );
  }

  async startRebuild(namespace: string, slot: number): Promise<number> {
    const { rows } = await this.pool.query<{ id: number }>(
      `INSERT INTO vector_rebuilds (namespace, slot, status, phase)
       VALUES ($1, $2, 'running', 'preparing') RETURNING id::int AS id`,
      [namespace, slot],
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
         finished_at = CASE WHEN $2 IN ('succeeded', 'failed') THEN now() ELSE finished_at END
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

  async latestRebuild(namespace: string): Promise<RebuildProgress | null> {
    const { rows } = await this.pool.query<RebuildProgress>(
      `SELECT namespace, slot, status, phase, processed::int AS processed, total::int AS total,
              embedded::int AS embedded, reused::int AS reused, error, started_at, updated_at,
              finished_at
       FROM vector_rebuilds WHERE namespace = $1 ORDER BY id DESC LIMIT 1`,
      [namespace],
    );
    return rows[0] ?? null;
  }
}
