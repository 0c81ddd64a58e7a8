import { ConflictException, Inject, Injectable, Logger } from '@nestjs/common';
import { EMBEDDING_PROVIDER } from '../embedding/embedding.module';
import { EmbeddingProvider } from '../embedding/embedding.types';
import { Idempotent, SingleflightOutcome } from '../idempotency';
import { LockHandle, LockService, PostgresFencing } from '../lock';
import { IndexMaintenance } from './index-maintenance.service';
import { NamespaceRepository } from './repositories/namespace.repository';
import { VectorItemRepository } from './repositories/vector-item.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { unknownNamespace } from './vector.errors';
import { VectorService } from './vector.service';
import { VectorSettings } from './vector-settings';
import { VectorTables } from './vector-tables';
import { ItemRow, SlotRow } from './vector.types';

export const rebuildLockKey = (namespace: string) => `lock:vector:rebuild:${namespace}`;
export const rebuildIdempotencyKey = (namespace: string) => `idem:vector:rebuild:${namespace}`;

/** Rows read, re-embedded and bulk-loaded per step. */
const PAGE_SIZE = 2_000;

export type RebuildResult = {
  success: true;
  namespace: string;
  total_processed: number;
  embedded: number;
  reused: number;
  slot: number;
  previous_slot: number;
  duration_ms: number;
} & Record<`${string}_updated`, number>;

/**
 * Rebuild: every item of a namespace (all registered tables) re-embedded into slot N+1, which is
 * bulk-loaded standalone (binary COPY into an unlogged staging table, then merged), indexed
 * after loading, attached, and switched to atomically. Upserts meanwhile write to both slots
 * (see VectorService.write), and the switch waits for in-flight ones: none is lost.
 */
@Injectable()
export class RebuildService {
  private readonly logger = new Logger('RebuildService');
  private readonly fencing = new PostgresFencing();

  constructor(
    @Inject(EMBEDDING_PROVIDER) private readonly embedder: EmbeddingProvider,
    private readonly tables: VectorTables,
    private readonly settings: VectorSettings,
    private readonly namespaces: NamespaceRepository,
    private readonly items: VectorItemRepository,
    private readonly schema: VectorSchemaRepository,
    private readonly vectors: VectorService,
    private readonly locks: LockService,
    private readonly indexes: IndexMaintenance,
  ) {}

  /**
   * The idempotent rebuild behind POST /rebuild-index. An unknown namespace is refused before
   * any idempotency record or lock is written.
   */
  async rebuildIndex(namespace: string, force: boolean): Promise<RebuildOutcome> {
    await this.requireNamespace(namespace);
    return (await this.rebuildOnce(namespace, force)) as RebuildOutcome;
  }

  /** One rebuild per namespace across replicas; callers that arrive meanwhile get its result. */
  @Idempotent({
    key: (namespace: string) => rebuildIdempotencyKey(namespace),
    scope: 'vector_rebuild',
    force: (_namespace: string, force: boolean) => force,
  })
  async rebuildOnce(namespace: string, _force: boolean): Promise<unknown> {
    return this.locks.withLock(rebuildLockKey(namespace), (lock) => this.rebuild(namespace, lock), {
      ttlMs: this.settings.lockTtlMs,
      waitTimeoutMs: this.settings.lockWaitMs,
      operation: 'rebuild',
    });
  }

  /** The seed's context-manager form: the rebuild lock held explicitly through the lock API. */
  async rebuildHoldingLock(namespace: string): Promise<RebuildResult> {
    await this.requireNamespace(namespace);
    const lock = await this.locks.acquire(rebuildLockKey(namespace), {
      ttlMs: this.settings.lockTtlMs,
      waitTimeoutMs: this.settings.lockWaitMs,
      operation: 'rebuild-manual',
      renew: true,
    });
    try {
      return await this.rebuild(namespace, lock);
    } finally {
      await lock.release();
    }
  }

  /**
   * Drops the slots that are neither active nor building (detach + drop: no dead tuples), keeping
   * the previous one for rollback if asked. Under the rebuild lock, so a running rebuild's slot
   * is never touched; a building slot left by a crashed rebuild is dropped too.
   */
  async cleanup(namespace: string, keepPrevious: boolean): Promise<CleanupResult> {
    await this.requireNamespace(namespace);
    return this.locks.withLock(
      rebuildLockKey(namespace),
      (lock) =>
        this.vectors.transaction(async (client) => {
          const row = await this.namespaces.lockForSwitch(client, namespace);
          if (!row) throw unknownNamespace(namespace);
          await this.fencing.check(client, lock);
          const keep = new Set([row.active_slot]);
          if (keepPrevious && row.previous_slot !== null) keep.add(row.previous_slot);
          const dropped: number[] = [];
          for (const slot of await this.namespaces.slots(namespace, client)) {
            if (keep.has(slot.slot)) continue;
            await this.dropSlot(client, slot);
            dropped.push(slot.slot);
          }
          return {
            success: true as const,
            namespace,
            active_slot: row.active_slot,
            kept_previous_slot: keepPrevious ? row.previous_slot : null,
            dropped_slots: dropped,
          };
        }),
      {
        ttlMs: this.settings.lockTtlMs,
        waitTimeoutMs: this.settings.lockWaitMs,
        operation: 'cleanup',
      },
    );
  }

  /**
   * Makes the previous slot active again. Items upserted since the current slot became active
   * are carried over first, so no acknowledged upsert is lost; the slots must share model and
   * dimension (otherwise rebuild instead).
   */
  async rollback(namespace: string) {
    await this.requireNamespace(namespace);
    return this.locks.withLock(
      rebuildLockKey(namespace),
      (lock) =>
        this.vectors.transaction(async (client) => {
          const row = await this.namespaces.lockForSwitch(client, namespace);
          if (!row) throw unknownNamespace(namespace);
          await this.fencing.check(client, lock);
          const previous =
            row.previous_slot === null
              ? null
              : await this.namespaces.slot(namespace, row.previous_slot, client);
          const active = (await this.namespaces.slot(namespace, row.active_slot, client))!;
          if (
            !previous ||
            !(await this.schema.slotTableExists(this.tables.names[0], previous.id))
          ) {
            throw new ConflictException(
              `Namespace ${namespace} has no previous slot to roll back to.`,
            );
          }
          if (previous.model !== active.model || previous.dimension !== active.dimension) {
            throw new ConflictException(
              `The previous slot of ${namespace} uses another model or dimension; rebuild instead.`,
            );
          }
          let carried = 0;
          for (const table of this.tables.names) {
            carried += await this.items.copyChangedSince(
              client,
              table,
              active.id,
              previous.id,
              active.activated_at!,
            );
          }
          await this.namespaces.activate(client, namespace, previous.slot);
          return {
            success: true as const,
            namespace,
            active_slot: previous.slot,
            previous_slot: active.slot,
            carried_over: carried,
          };
        }),
      {
        ttlMs: this.settings.lockTtlMs,
        waitTimeoutMs: this.settings.lockWaitMs,
        operation: 'rollback',
      },
    );
  }

  private async requireNamespace(namespace: string): Promise<void> {
    if (!(await this.namespaces.find(namespace))) throw unknownNamespace(namespace);
  }

  progress(namespace: string) {
    return this.namespaces.latestRebuild(namespace);
  }

  async rebuild(namespace: string, lock: LockHandle): Promise<RebuildResult> {
    const started = performance.now();
    const current = await this.namespaces.find(namespace);
    if (!current) throw unknownNamespace(namespace);
    const source = (await this.namespaces.slot(namespace, current.active_slot))!;
    const target = await this.beginSlot(namespace, lock);
    const progressId = await this.namespaces.startRebuild(namespace, target.slot);
    try {
      const counts = { embedded: 0, reused: 0 };
      let processed = 0;
      const total = await this.countItems(source);
      await this.namespaces.updateRebuild(progressId, { phase: 'loading', total });
      for (const table of this.tables.names) {
        await this.vectors.transaction((client) =>
          this.schema.createStaging(client, table, target.id),
        );
        // A table registered after this namespace was created has nothing to carry over.
        const hasSource = await this.schema.slotTableExists(table, source.id);
        for (let after: string | null = null; hasSource;) {
          lock.signal.throwIfAborted();
          const page = await this.items.page(table, source.id, after, PAGE_SIZE);
          if (page.length === 0) break;
          const rows = await this.reembed(page, target, counts);
          await this.items.copyIntoStaging(table, target.id, rows);
          processed += page.length;
          after = page[page.length - 1].obj_ref;
          await this.namespaces.updateRebuild(progressId, { processed, ...counts });
        }
        await this.items.mergeStaging(table, target.id);
      }
      await this.namespaces.updateRebuild(progressId, { phase: 'indexing' });
      const indexSettings = await this.settings.indexSettings();
      for (const table of this.tables.names) {
        lock.signal.throwIfAborted();
        await this.schema.ensureIndex(table, target.id, target.dimension, indexSettings);
      }
      await this.namespaces.updateRebuild(progressId, { phase: 'switching' });
      await this.vectors.transaction(async (client) => {
        await this.namespaces.lockForSwitch(client, namespace);
        await this.fencing.check(client, lock);
        for (const table of this.tables.names) await this.schema.attach(client, table, target.id);
        await this.namespaces.activate(client, namespace, target.slot);
      });
      const updated: Record<string, number> = {};
      let totalProcessed = 0;
      for (const table of this.tables.names) {
        updated[`${table}_updated`] = await this.items.count(table, target.id);
        totalProcessed += updated[`${table}_updated`];
      }
      await this.namespaces.updateRebuild(progressId, {
        status: 'succeeded',
        phase: 'done',
        processed,
      });
      await this.indexes
        .ensureAll()
        .catch((error: unknown) =>
          this.logger.warn(`index check after the rebuild failed: ${String(error)}`),
        );
      return {
        success: true,
        namespace,
        ...updated,
        total_processed: totalProcessed,
        embedded: counts.embedded,
        reused: counts.reused,
        slot: target.slot,
        previous_slot: source.slot,
        duration_ms: Math.round(performance.now() - started),
      };
    } catch (error) {
      await this.namespaces
        .updateRebuild(progressId, { status: 'failed', error: String(error) })
        .catch(() => undefined);
      await this.abandonSlot(namespace, target).catch((cleanupError: unknown) =>
        this.logger.warn(
          `could not remove the failed slot ${target.slot}: ${String(cleanupError)}`,
        ),
      );
      throw error;
    }
  }

  /**
   * Registers slot N+1 as building and creates its (standalone) tables. Takes the namespace row
   * FOR UPDATE, so upserts in flight finish first and every later one also writes the new slot.
   * A building slot left by a crashed rebuild is removed first (we hold the rebuild lock).
   */
  private async beginSlot(namespace: string, lock: LockHandle): Promise<SlotRow> {
    return this.vectors.transaction(async (client) => {
      const row = (await this.namespaces.lockForSwitch(client, namespace))!;
      await this.fencing.check(client, lock);
      if (row.building_slot !== null) {
        const orphan = await this.namespaces.slot(namespace, row.building_slot, client);
        if (orphan) await this.dropSlot(client, orphan);
      }
      const slot = await this.namespaces.createSlot(
        client,
        namespace,
        await this.namespaces.nextSlotNumber(client, namespace),
        this.embedder.model,
        this.embedder.dimension,
        'building',
      );
      await this.schema.createSlotTables(client, slot.id, slot.dimension, false);
      await this.namespaces.setBuilding(client, namespace, slot.slot);
      return slot;
    });
  }

  private async abandonSlot(namespace: string, slot: SlotRow): Promise<void> {
    await this.vectors.transaction(async (client) => {
      const row = await this.namespaces.lockForSwitch(client, namespace);
      if (row?.active_slot === slot.slot) return;
      await this.dropSlot(client, slot);
    });
  }

  async dropSlot(client: Parameters<VectorSchemaRepository['dropSlotTable']>[0], slot: SlotRow) {
    for (const table of this.tables.names) await this.schema.dropSlotTable(client, table, slot.id);
    await this.namespaces.deleteSlot(client, slot.namespace, slot.slot);
    await client.query(
      'UPDATE vector_namespaces SET building_slot = NULL WHERE namespace = $1 AND building_slot = $2',
      [slot.namespace, slot.slot],
    );
  }

  /**
   * Embeddings for the new slot: client-supplied ones are copied; provider-made ones of the same
   * model are reused (content unchanged, so the vector is too); the rest are computed.
   */
  private async reembed(
    page: ItemRow[],
    target: SlotRow,
    counts: { embedded: number; reused: number },
  ): Promise<ItemRow[]> {
    const rows = page.map((row) => ({ ...row }));
    const stale = rows.filter(
      (row) =>
        !(row.embedding_source === 'client' && row.embedding.length === target.dimension) &&
        !(row.embedding_source === 'provider' && row.model === target.model),
    );
    if (stale.length > 0) {
      const vectors = await this.embedder.embed(stale.map((row) => row.content));
      stale.forEach((row, i) => {
        row.embedding = vectors[i];
        row.embedding_source = 'provider';
        row.model = target.model;
      });
    }
    counts.embedded += stale.length;
    counts.reused += rows.length - stale.length;
    return rows;
  }

  private async countItems(slot: SlotRow): Promise<number> {
    let total = 0;
    for (const table of this.tables.names) {
      if (await this.schema.slotTableExists(table, slot.id))
        total += await this.items.count(table, slot.id);
    }
    return total;
  }
}

export type RebuildOutcome = SingleflightOutcome<RebuildResult>;

export interface CleanupResult {
  success: true;
  namespace: string;
  active_slot: number;
  kept_previous_slot: number | null;
  dropped_slots: number[];
}
