import {
  ConflictException,
  Inject,
  Injectable,
  Logger,
  ServiceUnavailableException,
} from '@nestjs/common';
import { ClientBase, Pool, PoolClient } from 'pg';
import { PG_POOL } from '../database/database.constants';
import { isLockTimeout } from '../database/database-errors';
import { DedicatedConnections } from '../database/dedicated-connections';
import { withTransactionOn } from '../database/transaction';
import { EMBEDDING_PROVIDER } from '../embedding/embedding.module';
import { EmbeddingProvider } from '../embedding/embedding.types';
import { Idempotent, IdempotencyService, SingleflightOutcome } from '../idempotency';
import {
  LockHandle,
  LockHolderChangedError,
  LockService,
  PostgresFencing,
  StaleFenceError,
} from '../lock';
import { ShutdownState } from '../lifecycle/shutdown-state';
import { IndexMaintenance } from './index-maintenance.service';
import { NamespaceRepository } from './repositories/namespace.repository';
import { VectorItemRepository } from './repositories/vector-item.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { unknownNamespace } from './vector.errors';
import { VectorMetrics } from './vector.metrics';
import { VectorService } from './vector.service';
import { VectorSettings } from './vector-settings';
import { VectorTables } from './vector-tables';
import { ItemRow, SlotRow } from './vector.types';

export const rebuildLockKey = (namespace: string) => `lock:vector:rebuild:${namespace}`;
export const rebuildIdempotencyKey = (namespace: string) => `idem:vector:rebuild:${namespace}`;

/** Rows read, re-embedded and bulk-loaded per step. */
const PAGE_SIZE = 2_000;
/** Rows copied server-side per statement (their row locks are held until it commits). */
const COPY_PAGE_SIZE = 5_000;
/**
 * How long dropping a slot's tables may wait for their locks. A rebuild that lost its lock while
 * paused mid-COPY keeps its staging table locked; its slot is then left for a later cleanup
 * rather than holding the namespace row (and every upsert) behind it.
 */
const DROP_LOCK_TIMEOUT = '2s';

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
 * Rebuild: every item of a namespace (all registered tables) into a new slot, loaded standalone
 * (reusable embeddings copied server-side; the others re-embedded and bulk-loaded with binary
 * COPY into an unlogged staging table, then merged), indexed after loading, attached, and
 * switched to atomically. Upserts meanwhile write to both slots
 * (see VectorService.write), and the switch waits for in-flight ones: none is lost.
 */
@Injectable()
export class RebuildService {
  private readonly logger = new Logger('RebuildService');
  private readonly fencing = new PostgresFencing();

  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly connections: DedicatedConnections,
    @Inject(EMBEDDING_PROVIDER) private readonly embedder: EmbeddingProvider,
    private readonly tables: VectorTables,
    private readonly settings: VectorSettings,
    private readonly namespaces: NamespaceRepository,
    private readonly items: VectorItemRepository,
    private readonly schema: VectorSchemaRepository,
    private readonly vectors: VectorService,
    private readonly locks: LockService,
    private readonly indexes: IndexMaintenance,
    private readonly idempotency: IdempotencyService,
    private readonly shutdown: ShutdownState,
    private readonly metrics: VectorMetrics,
  ) {}

  /**
   * The idempotent rebuild behind POST /rebuild-index. An unknown namespace is refused before
   * any idempotency record or lock is written.
   */
  async rebuildIndex(namespace: string, force: boolean): Promise<RebuildOutcome> {
    await this.requireNamespace(namespace);
    await this.takeOverAbandoned(namespace);
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
    await this.takeOverAbandoned(namespace);
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
   * A streamed import's new slot (see ImportService): a rebuild with the import's rows loaded
   * first, indexed once and switched to. Only if the rebuild lock is free now: null when a
   * rebuild runs, and the import merges into the active slot instead (which that rebuild's slot
   * also receives).
   */
  async rebuildWithImport(
    namespace: string,
    imported: ImportedRows,
  ): Promise<RebuildResult | null> {
    await this.takeOverAbandoned(namespace);
    const lock = await this.locks.tryAcquire(rebuildLockKey(namespace), {
      ttlMs: this.settings.lockTtlMs,
      operation: 'import',
      renew: true,
    });
    if (!lock) return null;
    try {
      return await this.rebuild(namespace, lock, imported);
    } finally {
      await lock
        .release()
        .catch((error: unknown) =>
          this.logger.warn(`release of ${lock.key} failed: ${String(error)}`),
        );
    }
  }

  /**
   * Drops the slots left building by rebuilds whose process died (an import's, found abandoned
   * by ImportService.sweep), if the rebuild lock is free now — holding it, no building slot can
   * be alive. Otherwise the next rebuild or cleanup drops them. Returns the slots dropped.
   */
  async dropAbandonedBuilds(namespace: string): Promise<number[]> {
    await this.takeOverAbandoned(namespace);
    const lock = await this.locks.tryAcquire(rebuildLockKey(namespace), {
      ttlMs: this.settings.lockTtlMs,
      operation: 'drop-abandoned-builds',
    });
    if (!lock) return [];
    try {
      return await this.fenced(lock, async (client) => {
        if (!(await this.namespaces.lockForSwitch(client, namespace))) return [];
        const dropped: number[] = [];
        for (const slot of await this.namespaces.slots(namespace, client)) {
          if (slot.status !== 'building') continue;
          await this.namespaces.retire(client, slot);
          if (await this.dropSlotIfFree(client, slot)) dropped.push(slot.slot);
        }
        return dropped;
      });
    } finally {
      await lock.release().catch(() => undefined);
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
          const busy: number[] = [];
          for (const slot of await this.namespaces.slots(namespace, client)) {
            if (keep.has(slot.slot)) continue;
            const list = (await this.dropSlotIfFree(client, slot)) ? dropped : busy;
            list.push(slot.slot);
          }
          const previous = row.previous_slot;
          if (previous === null || !(keep.has(previous) || busy.includes(previous))) {
            // No rollback is possible any more: its record of deletions is not needed.
            const active = await this.namespaces.slot(namespace, row.active_slot, client);
            if (active) await this.items.forgetDeletions(client, [active.id]);
          }
          return {
            success: true as const,
            namespace,
            active_slot: row.active_slot,
            kept_previous_slot: keepPrevious ? row.previous_slot : null,
            dropped_slots: dropped,
            busy_slots: busy,
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
   * Drops a namespace with every slot (tables, catalog rows, rebuild history), under its rebuild
   * lock and its row FOR UPDATE: no rebuild runs, upserts in flight finish first, and ones that
   * arrive after it create the namespace anew. All or nothing: if a slot's tables are held (by
   * a rebuild that lost its lock and is paused mid-load), nothing is dropped and the answer is
   * 409, to retry.
   */
  async dropNamespace(namespace: string): Promise<DropNamespaceResult> {
    await this.requireNamespace(namespace);
    await this.takeOverAbandoned(namespace);
    const result = await this.locks.withLock(
      rebuildLockKey(namespace),
      (lock) =>
        this.vectors.transaction(async (client) => {
          const row = await this.namespaces.lockForSwitch(client, namespace);
          if (!row) throw unknownNamespace(namespace);
          await this.fencing.check(client, lock);
          const slots = await this.namespaces.slots(namespace, client);
          for (const slot of slots) {
            if (!(await this.dropSlotIfFree(client, slot))) {
              throw new ConflictException(
                `Slot ${slot.slot} of ${namespace} is in use; nothing was dropped, try again.`,
              );
            }
          }
          await this.namespaces.deleteNamespace(client, namespace);
          return {
            success: true as const,
            namespace,
            dropped_slots: slots.map((slot) => slot.slot),
          };
        }),
      {
        ttlMs: this.settings.lockTtlMs,
        waitTimeoutMs: this.settings.lockWaitMs,
        operation: 'drop-namespace',
      },
    );
    // The last rebuild's cached result describes slots that are gone: a rebuild of a namespace
    // made anew under the same name must run, not replay it.
    await this.idempotency.forgetResult(rebuildIdempotencyKey(namespace));
    return result;
  }

  /**
   * Makes the previous slot active again. Items upserted since the current slot became active
   * (in the namespace's current epoch) are carried over first, so no acknowledged upsert is
   * lost; the slots must share model and dimension (otherwise rebuild instead).
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
          let removed = 0;
          for (const table of this.tables.names) {
            carried += await this.items.copyWrittenSince(
              client,
              table,
              active.id,
              previous.id,
              row.epoch,
            );
            // Items deleted since the switch must not come back from the previous slot.
            removed += await this.items.applyDeletions(client, table, {
              recordedFor: active.id,
              intoSlot: previous.id,
              truthSlot: active.id,
              sinceEpoch: row.epoch,
            });
          }
          await this.items.forgetDeletions(client, [active.id]);
          await this.namespaces.activate(client, namespace, previous.slot);
          return {
            success: true as const,
            namespace,
            active_slot: previous.slot,
            previous_slot: active.slot,
            carried_over: carried,
            deletions_applied: removed,
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

  async progress(namespace: string) {
    return this.namespaces.latestRebuild(namespace);
  }

  /**
   * The rebuild proper, under the rebuild lock. Every catalog change — registering the slot,
   * the switch, its own clean-up — runs in a transaction that first checks the lock's fence, so
   * a rebuild that lost its lease (expired, force-released, a failover) changes nothing once a
   * newer holder has written; clean-up acts on its own slot, by id, only. The bulk work between
   * (copies, staging loads, the merge, index builds) writes only the rebuild's own slot, which nobody
   * reads before the fenced switch has checked it is still the namespace's building slot; it
   * checks the fence without locking it before each step, so a stale rebuild stops early — and,
   * holding no fence row lock while it loads, a rebuild paused mid-load cannot hold up its
   * successor or an operator's force-release.
   *
   * The rebuild keeps one connection of its own (outside the pool) from start to switch. On
   * it, it holds a session advisory lock on the new slot's id (see REBUILD_SESSION_LOCK) and
   * makes the switch: if the process dies or the connection is cut, Postgres drops the lock at
   * once, upserts stop writing the orphan slot, progress reads `abandoned`, and the next rebuild
   * takes over without waiting for leases to run out.
   *
   * Rows whose embedding can stay as it is (client vectors of the new dimension, provider
   * vectors of the new model) are copied server-side; only the rest travel through this process
   * to be embedded again.
   */
  async rebuild(
    namespace: string,
    lock: LockHandle,
    imported?: ImportedRows,
  ): Promise<RebuildResult> {
    const started = performance.now();
    if (this.shutdown.isDraining) throw shuttingDown(namespace);
    const session = await this.connections.open('rebuild');
    // On shutdown the rebuild stops at once, even in the middle of a statement (an index build
    // takes minutes), and hands its lock and idempotency record back (see ShutdownState).
    const pid = await this.connections.backendPid(session);
    const stopStatement = () => void this.connections.cancelStatement(pid);
    this.shutdown.signal.addEventListener('abort', stopStatement, { once: true });
    const stop = AbortSignal.any([lock.signal, this.shutdown.signal]);
    let begun: BegunRebuild | undefined;
    const timing = this.metrics.startRebuild();
    try {
      begun = await this.beginSlot(session, namespace, lock);
      const { source, target, progressId, leftovers } = begun;
      for (const leftover of leftovers) await this.dropLeftover(leftover, lock);
      const counts = { embedded: 0, reused: 0 };
      let processed = 0;
      const sourceTables = new Set<string>();
      if (imported) {
        // An import's rows go in first: the copies of the source below then skip what it
        // replaces (they never overwrite), and upserts made since beginSlot win over it.
        await this.assertCurrent(lock);
        processed += await this.vectors.transaction((client) => imported.load(client, target));
      }
      const total = await this.countItems(source);
      timing.enter('loading');
      await this.namespaces.updateRebuild(progressId, { phase: 'loading', total });
      for (const table of this.tables.names) {
        // A table registered after this namespace was created has nothing to carry over.
        const hasSource = await this.schema.slotTableExists(table, source.id);
        if (hasSource) sourceTables.add(table);
        // Rows whose embedding stays as it is never leave Postgres...
        for (let after: string | null = null; hasSource;) {
          await this.assertCurrent(lock);
          const page = await this.items.copyReusable(
            table,
            source.id,
            target.id,
            target,
            after,
            COPY_PAGE_SIZE,
          );
          if (page.scanned === 0) break;
          counts.reused += page.reused;
          processed += page.reused;
          after = page.last;
          await this.namespaces.updateRebuild(progressId, { processed, ...counts });
        }
        // ...the others are embedded again and bulk-loaded through the staging table, made
        // only when there are some (a rebuild with the same model has none).
        let staged = false;
        for (let after: string | null = null; hasSource;) {
          await this.assertCurrent(lock);
          const page = await this.items.page(table, source.id, after, PAGE_SIZE, target);
          if (page.length === 0) break;
          const rows = await this.reembed(page, target, counts, stop);
          await this.vectors.transaction(async (client) => {
            if (!staged) await this.schema.createStaging(client, table, target.id);
            await this.items.copyIntoStaging(client, table, target.id, rows);
          });
          staged = true;
          processed += page.length;
          after = page[page.length - 1].obj_ref;
          await this.namespaces.updateRebuild(progressId, { processed, ...counts });
        }
        if (staged) {
          await this.assertCurrent(lock);
          await this.vectors.transaction((client) =>
            this.items.mergeStaging(client, table, target.id),
          );
        }
      }
      timing.enter('indexing');
      await this.namespaces.updateRebuild(progressId, { phase: 'indexing' });
      await imported?.onPhase('indexing');
      // Upserts now write the new slot's side tables, so that its index can be built plainly
      // (one pass; CONCURRENTLY adds a validation scan, about a tenth more).
      await withTransactionOn(session, async (client) => {
        await this.lockOwnNamespace(client, namespace, target, lock);
        for (const table of this.tables.names) {
          await this.schema.createDelta(client, table, target.id, target.dimension);
        }
        await this.namespaces.setBuildingIndexing(client, namespace);
      });
      const indexSettings = await this.settings.indexSettings();
      for (const table of this.tables.names) {
        await this.assertCurrent(lock);
        // On the connection that created the table: measured here, the same HNSW build took
        // about a third longer from any other session (41 s against 31 s for 100k × 384).
        await this.schema.ensureIndex(table, target.id, target.dimension, indexSettings, {
          concurrently: false,
          on: session,
        });
      }
      timing.enter('switching');
      await this.namespaces.updateRebuild(progressId, { phase: 'switching' });
      await imported?.onPhase('switching');
      await withTransactionOn(session, async (client) => {
        await this.lockOwnNamespace(client, namespace, target, lock);
        for (const table of this.tables.names) {
          await this.items.mergeDelta(client, table, target.id);
          // Rows the copy read before they were deleted go again (see VectorService.remove).
          if (sourceTables.has(table)) {
            await this.items.applyDeletions(client, table, {
              recordedFor: target.id,
              intoSlot: target.id,
              truthSlot: source.id,
            });
          }
          await this.schema.attach(client, table, target.id);
        }
        // Applied; and the old slot's, kept for a rollback to the one before it, are moot now.
        await this.items.forgetDeletions(client, [target.id, source.id]);
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
      timing.end('succeeded');
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
      if (begun) {
        await this.namespaces
          .updateRebuild(begun.progressId, { status: 'failed', error: String(error) })
          .catch(() => undefined);
        // On shutdown the slot is left to the next rebuild, which drops leftovers first thing:
        // handing the lock over at once matters more.
        if (!this.shutdown.isDraining) {
          await this.abandonSlot(begun.target, lock).catch((cleanupError: unknown) =>
            this.logger.warn(
              `left the failed slot ${begun!.target.slot} of ${namespace} for a later cleanup: ` +
                String(cleanupError),
            ),
          );
        }
      }
      if (this.shutdown.isDraining) {
        timing.end('stopped');
        throw shuttingDown(namespace);
      }
      // Superseded mid-step (its slot's tables dropped under it by the successor, say): the
      // cause to report is the lost lease, not what it broke.
      if (!(error instanceof StaleFenceError) && (await this.superseded(lock))) {
        timing.end('superseded');
        throw new StaleFenceError(lock.key, lock.fence);
      }
      timing.end(error instanceof StaleFenceError ? 'superseded' : 'failed');
      throw error;
    } finally {
      // Whatever else ended it (a throw from the bookkeeping above) counts as failed.
      timing.end('failed');
      this.shutdown.signal.removeEventListener('abort', stopStatement);
      // Closing the connection ends the session lock with it, whatever state it is in.
      await session.end().catch(() => undefined);
    }
  }

  /**
   * Registers a new slot (a number never used before in the namespace) as building, creates its
   * standalone tables, takes the session lock on it and records the rebuild, all in one fenced
   * transaction on the rebuild's own connection. The namespace row is taken FOR UPDATE, so
   * upserts in flight finish first and every later one also writes the new slot. Slots left
   * building by earlier rebuilds — dead, or alive but superseded now that we hold the lock with
   * a newer fence — are retired here and dropped after commit.
   */
  private async beginSlot(
    session: ClientBase,
    namespace: string,
    lock: LockHandle,
  ): Promise<BegunRebuild> {
    return withTransactionOn(session, async (client) => {
      const row = await this.namespaces.lockForSwitch(client, namespace);
      if (!row) throw unknownNamespace(namespace);
      await this.fencing.check(client, lock);
      const source = (await this.namespaces.slot(namespace, row.active_slot, client))!;
      const leftovers = (await this.namespaces.slots(namespace, client)).filter(
        (slot) => slot.status === 'building',
      );
      for (const leftover of leftovers) await this.namespaces.retire(client, leftover);
      await this.namespaces.abandonRunningRebuilds(client, namespace);
      const target = await this.namespaces.createSlot(
        client,
        namespace,
        await this.namespaces.allocateSlotNumber(client, namespace),
        this.embedder.model,
        this.embedder.dimension,
        'building',
      );
      await this.namespaces.holdRebuildSession(client, target.id);
      await this.schema.createSlotTables(client, target.id, target.dimension, false);
      await this.namespaces.setBuilding(client, namespace, target.slot);
      const progressId = await this.namespaces.startRebuild(client, target, lock.fence);
      return { source, target, progressId, leftovers };
    });
  }

  /**
   * In a transaction on the rebuild's connection: the namespace row FOR UPDATE (upserts in
   * flight finish, new ones wait), the fence checked, and the building slot still this one.
   */
  private async lockOwnNamespace(
    client: ClientBase,
    namespace: string,
    target: SlotRow,
    lock: LockHandle,
  ): Promise<void> {
    const row = (await this.namespaces.lockForSwitch(client, namespace))!;
    await this.fencing.check(client, lock);
    if (row.building_slot !== target.slot) {
      throw new ConflictException(
        `The rebuild of ${namespace} into slot ${target.slot} was superseded by another.`,
      );
    }
  }

  /** Drops a slot an earlier rebuild left behind, if its tables are free; else cleanup will. */
  private async dropLeftover(slot: SlotRow, lock: LockHandle): Promise<void> {
    await this.fenced(lock, async (client) => {
      if (!(await this.dropSlotIfFree(client, slot))) {
        this.logger.warn(
          `slot ${slot.slot} of ${slot.namespace} is still in use; left for cleanup`,
        );
      }
    });
  }

  /** After a failure: drops this rebuild's own slot (by id), unless it became active after all. */
  private async abandonSlot(slot: SlotRow, lock: LockHandle): Promise<void> {
    await this.fenced(lock, async (client) => {
      const row = await this.namespaces.lockForSwitch(client, slot.namespace);
      if (!row || row.active_slot === slot.slot) return;
      await this.dropSlot(client, slot);
    });
  }

  /**
   * Drops a slot's tables and row, waiting at most DROP_LOCK_TIMEOUT for its tables (inside a
   * savepoint, so a busy slot leaves the caller's transaction usable). False when busy.
   */
  private async dropSlotIfFree(client: PoolClient, slot: SlotRow): Promise<boolean> {
    await client.query('SAVEPOINT drop_slot');
    await client.query(`SET LOCAL lock_timeout = '${DROP_LOCK_TIMEOUT}'`);
    try {
      await this.dropSlot(client, slot);
    } catch (error) {
      if (!isLockTimeout(error)) throw error;
      // Also undoes the SET LOCAL above.
      await client.query('ROLLBACK TO SAVEPOINT drop_slot');
      return false;
    }
    await client.query('RELEASE SAVEPOINT drop_slot');
    await client.query('SET LOCAL lock_timeout TO DEFAULT');
    return true;
  }

  private async dropSlot(client: PoolClient, slot: SlotRow): Promise<void> {
    for (const table of this.tables.names) await this.schema.dropSlotTable(client, table, slot.id);
    await this.items.forgetDeletions(client, [slot.id]);
    await this.namespaces.deleteSlot(client, slot);
  }

  /**
   * Throws once the lease is known lost, or a newer holder's fence is recorded. A plain read:
   * it neither waits for nor holds the fence row (see rebuild()).
   */
  private async assertCurrent(lock: LockHandle): Promise<void> {
    this.assertRunning();
    lock.signal.throwIfAborted();
    if (await this.superseded(lock)) throw new StaleFenceError(lock.key, lock.fence);
  }

  /** A replica that is shutting down starts no rebuild step (another replica will run it). */
  private assertRunning(): void {
    this.shutdown.signal.throwIfAborted();
  }

  private superseded(lock: LockHandle): Promise<boolean> {
    return this.fencing.isSuperseded(this.pool, lock).catch(() => false);
  }

  /** A transaction that starts with the lock's fence check (refused once a newer holder wrote). */
  private fenced<T>(lock: LockHandle, work: (client: PoolClient) => Promise<T>): Promise<T> {
    return this.fencing.transaction(this.pool, lock, work);
  }

  /**
   * A rebuild whose process is gone (progress reads `abandoned`) still holds, until their
   * leases run out, the rebuild lock and the idempotency record of its run. The one caller that
   * records it abandoned frees both — each only if it still belongs to that run — so the next
   * rebuild starts now. Safe even if the old process lives on without its connection: the
   * force-release advances the fence, so it can change nothing more.
   */
  private async takeOverAbandoned(namespace: string): Promise<void> {
    const latest = await this.namespaces.abandonedRebuild(namespace);
    if (!latest || !(await this.namespaces.markAbandoned(latest.id))) return;
    this.logger.warn(
      `the rebuild of ${namespace} into slot ${latest.slot} was abandoned; taking over`,
    );
    const key = rebuildIdempotencyKey(namespace);
    const record = await this.idempotency.peek(key);
    if (record?.status === 'in_progress') await this.idempotency.abandon(key, record.owner);
    if (latest.fence !== null) {
      // Aimed at the dead run's fence: a lock that has passed to anyone else is left alone.
      await this.locks
        .forceRelease(rebuildLockKey(namespace), {
          fence: latest.fence,
          by: 'abandoned-rebuild-takeover',
        })
        .catch((error: unknown) => {
          if (!(error instanceof LockHolderChangedError)) throw error;
        });
    }
  }

  /**
   * Embeddings for the new slot: client-supplied ones are copied; provider-made ones of the same
   * model are reused (content unchanged, so the vector is too); the rest are computed.
   */
  private async reembed(
    page: ItemRow[],
    target: SlotRow,
    counts: { embedded: number; reused: number },
    signal: AbortSignal,
  ): Promise<ItemRow[]> {
    const rows = page.map((row) => ({ ...row }));
    const stale = rows.filter(
      (row) =>
        !(row.embedding_source === 'client' && row.embedding.length === target.dimension) &&
        !(row.embedding_source === 'provider' && row.model === target.model),
    );
    if (stale.length > 0) {
      const vectors = await this.embedder.embed(
        stale.map((row) => row.content),
        { signal },
      );
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

const shuttingDown = (namespace: string) =>
  new ServiceUnavailableException(
    `This replica is shutting down: the rebuild of ${namespace} stopped; send it again ` +
      '(another replica runs it).',
  );
/** Rows a streamed import adds to a rebuild (see rebuildWithImport). */
export interface ImportedRows {
  /** Loads the rows into the new slot, on a transaction of the rebuild; returns how many. */
  load(client: PoolClient, target: SlotRow): Promise<number>;
  /** Told when the rebuild starts indexing and switching, for the import's own progress. */
  onPhase(phase: 'indexing' | 'switching'): Promise<void>;
}

interface BegunRebuild {
  source: SlotRow;
  target: SlotRow;
  progressId: number;
  /** Slots earlier rebuilds left building, retired in the same transaction; to be dropped. */
  leftovers: SlotRow[];
}

export interface DropNamespaceResult {
  success: true;
  namespace: string;
  dropped_slots: number[];
}

export interface CleanupResult {
  success: true;
  namespace: string;
  active_slot: number;
  kept_previous_slot: number | null;
  dropped_slots: number[];
  /** Slots whose tables were in use (by a rebuild that lost its lock); a later cleanup drops them. */
  busy_slots: number[];
}
