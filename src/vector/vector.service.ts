import { createHash } from 'node:crypto';
import { Inject, Injectable, NotFoundException, ServiceUnavailableException } from '@nestjs/common';
import { Pool, PoolClient } from 'pg';
import { FieldError } from '../common/problem';
import { invalidRequest } from '../common/validation';
import { PG_POOL } from '../database/database.constants';
import { isUndefinedTable } from '../database/database-errors';
import { withTransaction } from '../database/transaction';
import { EMBEDDING_PROVIDER } from '../embedding/embedding.module';
import { EmbeddingProvider } from '../embedding/embedding.types';
import { LockService, PostgresFencing, WithLock } from '../lock';
import { BatchDeleteDto } from './dto/delete.dto';
import { BatchUpsertDto, SearchDto, UpsertItemDto } from './dto/vector.dto';
import { FilterNode, parseFilter } from './metadata-filter';
import { NamespaceRepository } from './repositories/namespace.repository';
import { SearchHit, VectorItemRepository } from './repositories/vector-item.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { modelMismatch, unknownNamespace } from './vector.errors';
import { VectorSettings } from './vector-settings';
import { VectorMetrics } from './vector.metrics';
import { VectorTables } from './vector-tables';
import { ItemRow, SlotRow } from './vector.types';

/** Namespaces whose active slot a replica remembers for searches (cleared when full). */
const SEARCH_SLOT_CACHE_SIZE = 10_000;

export const upsertLockKey = (table: string, namespace: string) =>
  `lock:vector:upsert:${table}:${namespace}`;

/** A search by obj_ref names an item the namespace's active slot does not hold. */
const unknownItem = (namespace: string, table: string, objRef: string) =>
  new NotFoundException(
    `No item ${JSON.stringify(objRef)} in table ${table} of namespace ${namespace}.`,
  );

export interface UpsertResult {
  success: true;
  processed: number;
  namespace: string;
  slot: number;
  errors: FieldError[];
  embedded: number;
  reused: number;
}

/** A validated batch, with every row's embedding ready, waiting for the lock. */
interface PreparedBatch {
  table: string;
  namespace: string;
  rows: ItemRow[];
  embedded: number;
  reused: number;
}

export interface DeleteResult {
  success: true;
  namespace: string;
  /** Items removed from the active slot. */
  deleted: number;
  /** obj_refs the active slot did not hold. */
  not_found: string[];
}

/** A validated batch of deletions, waiting for the lock. */
interface PreparedDelete {
  table: string;
  namespace: string;
  objRefs: string[];
}

/** Writes rows into one slot (or its side table) of a fenced upsert transaction. */
export type SlotWriter = (
  client: PoolClient,
  slotId: number,
  epoch: number,
  into: 'slot' | 'delta',
) => Promise<number>;

/** Rows staged elsewhere (a streamed import), to be written under the upsert lock. */
export interface StagedWrite {
  table: string;
  namespace: string;
  /** Refuses (throws) when the rows cannot go into this slot (dimension, model). */
  assertWritable: (slot: SlotRow) => void;
  put: SlotWriter;
}

/**
 * Upserts and search: orchestration over the repositories. Embeddings are computed
 * before the lock is taken, so the lock is held for the write alone.
 */
@Injectable()
export class VectorService {
  private readonly fencing = new PostgresFencing();
  private readonly searchSlots = new Map<string, SlotRow>();

  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    @Inject(EMBEDDING_PROVIDER) private readonly embedder: EmbeddingProvider,
    private readonly tables: VectorTables,
    private readonly settings: VectorSettings,
    private readonly namespaces: NamespaceRepository,
    private readonly items: VectorItemRepository,
    private readonly schema: VectorSchemaRepository,
    private readonly locks: LockService,
    private readonly metrics: VectorMetrics,
  ) {}

  async batchUpsert(dto: BatchUpsertDto): Promise<UpsertResult> {
    const started = performance.now();
    this.tables.assertRegistered(dto.table_name);
    const active = await this.activeSlot(dto.namespace);
    const dimension = active?.dimension ?? this.embedder.dimension;
    this.validateBatch(dto, dimension);
    const batch = await this.prepare(dto, active);
    const slot = await this.write(batch);
    this.metrics.upsertDuration.observe(
      { table: dto.table_name },
      (performance.now() - started) / 1000,
    );
    return {
      success: true,
      processed: batch.rows.length,
      namespace: dto.namespace,
      slot,
      errors: [],
      embedded: batch.embedded,
      reused: batch.reused,
    };
  }

  /**
   * One transaction under the (table, namespace) lock: the fence check first, then the rows into
   * the active slot — and into the building slot while a live rebuild loads it, so the switch
   * loses none. The namespace row is held FOR SHARE: a rebuild's switch waits for this write to
   * commit. The rows are checked against both slots here, under that lock: a switch or a new
   * rebuild may have come between the request's validation and this transaction, and a write
   * one of the slots cannot take is refused whole (400/409), never half made or silently thinned.
   */
  @WithLock({
    key: (batch: PreparedBatch) => upsertLockKey(batch.table, batch.namespace),
    operation: 'batch-upsert',
  })
  async write(batch: PreparedBatch): Promise<number> {
    const { slot } = await this.writeFenced(
      batch.table,
      batch.namespace,
      (slot) => this.assertWritable(batch, slot),
      (client, slotId, epoch, into) =>
        this.items.upsert(client, batch.table, slotId, batch.rows, epoch, into),
    );
    return slot;
  }

  /**
   * A streamed import's rows, already in its staging table, written like a batch (see write):
   * same lock, same fenced transaction, same slots. `put` copies the staged rows into one slot.
   */
  @WithLock({
    key: (staged: StagedWrite) => upsertLockKey(staged.table, staged.namespace),
    operation: 'import-merge',
  })
  async writeStaged(staged: StagedWrite): Promise<{ slot: number; written: number }> {
    return this.writeFenced(staged.table, staged.namespace, staged.assertWritable, staged.put);
  }

  /** The body of write and writeStaged, under the caller's (table, namespace) upsert lock. */
  private async writeFenced(
    table: string,
    namespace: string,
    assertWritable: (slot: SlotRow) => void,
    put: SlotWriter,
  ): Promise<{ slot: number; written: number }> {
    const lock = this.locks.current(upsertLockKey(table, namespace))!;
    const result = await this.transaction(async (client) => {
      const targets =
        (await this.namespaces.lockForWrite(client, namespace)) ??
        (await this.createNamespace(client, namespace));
      await this.fencing.check(client, lock);
      const { namespace: row, active, building } = targets;
      assertWritable(active);
      if (building) assertWritable(building);
      const written = await put(client, active.id, row.epoch, 'slot');
      if (building) {
        // While the building slot's index is built, its copy goes to the slot's side table.
        await put(client, building.id, row.epoch, row.building_indexing ? 'delta' : 'slot');
      }
      return { slot: row.active_slot, written };
    });
    this.metrics.itemsUpserted.inc({ table }, result.written);
    return result;
  }

  /**
   * Deletes items by obj_ref from the active slot, under the same lock as upserts (writes to a
   * key are serialised, so "the last acknowledged write wins" holds for deletes too). An unknown
   * namespace is refused before the lock; a delete never creates one.
   */
  async batchDelete(dto: BatchDeleteDto): Promise<DeleteResult> {
    this.tables.assertRegistered(dto.table_name);
    const problems: FieldError[] = [];
    const seen = new Set<string>();
    dto.obj_refs.forEach((objRef, i) => {
      if (seen.has(objRef)) {
        problems.push({ field: `obj_refs[${i}]`, message: 'obj_ref appears twice in this batch' });
      }
      seen.add(objRef);
    });
    if (problems.length > 0) throw invalidRequest(problems);
    if (!(await this.namespaces.find(dto.namespace))) throw unknownNamespace(dto.namespace);
    return this.remove({ table: dto.table_name, namespace: dto.namespace, objRefs: dto.obj_refs });
  }

  /**
   * One fenced transaction under the (table, namespace) lock, like write(). A live rebuild's
   * slot loses the keys too (or its side table, while its index is built), and the deletion is
   * recorded for it: its copy may have read the rows before they were deleted and bring them
   * back, and its switch removes them again (VectorItemRepository.applyDeletions). While a
   * previous slot is kept for rollback, deletions are recorded for the active slot as well, so
   * a rollback does not resurrect them from the previous slot.
   */
  @WithLock({
    key: (batch: PreparedDelete) => upsertLockKey(batch.table, batch.namespace),
    operation: 'batch-delete',
  })
  async remove(batch: PreparedDelete): Promise<DeleteResult> {
    const lock = this.locks.current(upsertLockKey(batch.table, batch.namespace))!;
    const result = await this.transaction(async (client) => {
      const targets = await this.namespaces.lockForWrite(client, batch.namespace);
      if (!targets) throw unknownNamespace(batch.namespace);
      await this.fencing.check(client, lock);
      const { namespace, active, building } = targets;
      const deleted = await this.items.deleteRefs(client, batch.table, active.id, batch.objRefs);
      if (deleted.length > 0 && namespace.previous_slot !== null) {
        await this.items.recordDeletions(client, batch.table, active.id, deleted, namespace.epoch);
      }
      if (building) {
        const from = namespace.building_indexing ? 'delta' : 'slot';
        await this.items.deleteRefs(client, batch.table, building.id, batch.objRefs, from);
        if (deleted.length > 0) {
          await this.items.recordDeletions(
            client,
            batch.table,
            building.id,
            deleted,
            namespace.epoch,
          );
        }
      }
      const gone = new Set(deleted);
      return {
        success: true as const,
        namespace: batch.namespace,
        deleted: deleted.length,
        not_found: batch.objRefs.filter((objRef) => !gone.has(objRef)),
      };
    });
    this.metrics.itemsDeleted.inc({ table: batch.table }, result.deleted);
    return result;
  }

  /**
   * Client vectors must have the slot's dimension and provider vectors its model. During a
   * rebuild to another dimension or model, such a write could not reach the slot about to become
   * active; it is refused rather than acknowledged and lost at the switch.
   */
  private assertWritable(batch: PreparedBatch, slot: SlotRow): void {
    const problems: FieldError[] = [];
    batch.rows.forEach((row, i) => {
      if (row.embedding_source === 'client' && row.embedding.length !== slot.dimension) {
        problems.push({
          field: `items[${i}].embedding`,
          message:
            slot.status === 'building'
              ? `a rebuild of this namespace to ${slot.dimension} dimensions is running; send ` +
                `${slot.dimension}-dimensional vectors after it switches, or none`
              : `must have ${slot.dimension} dimensions, not ${row.embedding.length}`,
        });
      }
    });
    if (problems.length > 0) throw invalidRequest(problems);
    if (batch.rows.some((row) => row.embedding_source === 'provider' && row.model !== slot.model)) {
      throw modelMismatch(batch.namespace, slot.model, this.embedder.model);
    }
  }

  async search(dto: SearchDto) {
    // Everything about the request is checked before any database access.
    this.tables.assertRegistered(dto.table_name);
    const given = [dto.query, dto.vector, dto.obj_ref].filter((value) => value !== undefined);
    if (given.length !== 1) {
      throw invalidRequest([
        { field: 'query', message: 'send exactly one of query, vector or obj_ref' },
      ]);
    }
    const { filter, errors } = parseFilter(dto.filter);
    if (errors.length > 0) throw invalidRequest(errors);
    const started = performance.now();
    let slot = await this.searchSlot(dto.namespace);
    // The statement names the slot it found active; a switch since the cache was filled costs
    // one more statement. Bounded: a namespace switching on every try is not worth chasing.
    for (let attempt = 0; ; attempt++) {
      const outcome = await this.searchSlotOf(slot, dto, filter).catch((error: unknown) => {
        // The cached slot was switched away from and dropped meanwhile.
        if (isUndefinedTable(error) && attempt < 3) return null;
        throw error;
      });
      if (outcome && outcome.activeSlot === slot.slot) {
        if (!outcome.found) throw unknownItem(dto.namespace, dto.table_name, dto.obj_ref!);
        this.metrics.searchDuration.observe(
          {
            table: dto.table_name,
            kind: dto.query !== undefined ? 'query' : dto.vector !== undefined ? 'vector' : 'item',
            filtered: filter ? 'true' : 'false',
          },
          (performance.now() - started) / 1000,
        );
        return outcome.response;
      }
      if (attempt >= 3) throw new ServiceUnavailableException('The namespace keeps switching.');
      slot = await this.searchSlot(dto.namespace, true);
    }
  }

  private async searchSlotOf(slot: SlotRow, dto: SearchDto, filter: FilterNode | null) {
    const { activeSlot, found, hits } = await this.searchHits(slot, dto, filter);
    return {
      activeSlot,
      found,
      response: {
        success: true as const,
        namespace: dto.namespace,
        slot: slot.slot,
        results: hits.map((hit) => ({
          obj_ref: hit.obj_ref,
          id: hit.item_id,
          score: hit.score,
          content: hit.content,
          metadata: hit.metadata,
        })),
      },
    };
  }

  /**
   * A plain search by vector or query is the one prepared statement of `items.search`; a
   * filter or an obj_ref takes `items.searchGuarded`. By item the item itself is left out, so
   * ef_search is at least k + 1.
   */
  private async searchHits(
    slot: SlotRow,
    dto: SearchDto,
    filter: FilterNode | null,
  ): Promise<{ activeSlot: number | null; found: boolean; hits: SearchHit[] }> {
    const session = this.settings.efSearch;
    const limits = {
      k: dto.k,
      efSearch: Math.max(dto.k, session),
      sessionEfSearch: session,
      maxScanTuples: this.settings.maxScanTuples,
    };
    if (dto.obj_ref !== undefined) {
      return this.items.searchGuarded(dto.table_name, slot, { objRef: dto.obj_ref }, filter, {
        ...limits,
        efSearch: Math.max(dto.k + 1, session),
      });
    }
    let vector: number[];
    if (dto.vector) {
      const problems = vectorProblems(dto.vector, slot.dimension, 'vector');
      if (problems.length > 0) throw invalidRequest(problems);
      vector = dto.vector;
    } else {
      if (slot.model !== this.embedder.model) {
        throw modelMismatch(dto.namespace, slot.model, this.embedder.model);
      }
      [vector] = await this.embedder.embed([dto.query!]);
    }
    if (filter) return this.items.searchGuarded(dto.table_name, slot, { vector }, filter, limits);
    const plain = await this.items.search(
      dto.table_name,
      slot,
      vector,
      dto.k,
      limits.efSearch,
      session,
    );
    return { ...plain, found: true };
  }

  /**
   * The slot a search starts from, cached per namespace. The cache is only a guess: the search
   * statement itself checks it against the namespace row (see VectorItemRepository.search).
   */
  private async searchSlot(namespace: string, refresh = false): Promise<SlotRow> {
    const cached = refresh ? undefined : this.searchSlots.get(namespace);
    if (cached) return cached;
    const slot = await this.activeSlot(namespace);
    if (!slot) {
      this.searchSlots.delete(namespace);
      throw unknownNamespace(namespace);
    }
    if (this.searchSlots.size >= SEARCH_SLOT_CACHE_SIZE) this.searchSlots.clear();
    this.searchSlots.set(namespace, slot);
    return slot;
  }

  async activeSlot(namespace: string, db: Pool | PoolClient = this.pool): Promise<SlotRow | null> {
    const row = await this.namespaces.find(namespace, db);
    return row ? this.namespaces.slot(namespace, row.active_slot, db) : null;
  }

  transaction<T>(work: (client: PoolClient) => Promise<T>): Promise<T> {
    return withTransaction(this.pool, work);
  }

  /**
   * First upsert of a namespace: slot 1 with the provider's model, its tables and (empty, so
   * instant) indexes. Serialised per namespace by an advisory lock: upserts into two tables of a
   * new namespace hold different Redis locks.
   */
  private async createNamespace(client: PoolClient, namespace: string) {
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [
      `vector-namespace:${namespace}`,
    ]);
    const existing = await this.namespaces.lockForWrite(client, namespace);
    if (existing) return existing;
    const slot = await this.namespaces.create(
      client,
      namespace,
      this.embedder.model,
      this.embedder.dimension,
    );
    // Tables and indexes first, attached last: ATTACH takes its parent's SHARE UPDATE EXCLUSIVE
    // lock (self-conflicting) until commit, so namespaces created at the same time wait for
    // each other from their first ATTACH on; what comes before it runs side by side.
    await this.schema.createSlotTables(client, slot!.id, slot!.dimension, false);
    for (const table of this.tables.names) {
      await this.schema.createEmptyIndex(
        client,
        table,
        slot!.id,
        slot!.dimension,
        await this.settings.indexSettings(),
      );
    }
    for (const table of this.tables.names) await this.schema.attach(client, table, slot!.id);
    return (await this.namespaces.lockForWrite(client, namespace))!;
  }

  private validateBatch(dto: BatchUpsertDto, dimension: number): void {
    const problems: FieldError[] = [];
    if (dto.items.length > this.settings.maxItems) {
      problems.push({
        field: 'items',
        message: `at most ${this.settings.maxItems} items per request`,
      });
    }
    const seen = new Set<string>();
    dto.items.forEach((item, i) => {
      if (seen.has(item.obj_ref)) {
        problems.push({
          field: `items[${i}].obj_ref`,
          message: 'obj_ref appears twice in this batch',
        });
      }
      seen.add(item.obj_ref);
      problems.push(...this.itemProblems(item, dimension, `items[${i}]`));
    });
    if (problems.length > 0) throw invalidRequest(problems);
  }

  /** The configured limits of one item (sizes, embedding dimension), beyond its DTO's checks. */
  itemProblems(item: UpsertItemDto, dimension: number, field: string): FieldError[] {
    const problems: FieldError[] = [];
    if (Buffer.byteLength(item.content) > this.settings.contentMaxBytes) {
      problems.push({
        field: `${field}.content`,
        message: `content must be at most ${this.settings.contentMaxBytes} bytes`,
      });
    }
    if (
      item.metadata !== undefined &&
      Buffer.byteLength(JSON.stringify(item.metadata)) > this.settings.metadataMaxBytes
    ) {
      problems.push({
        field: `${field}.metadata`,
        message: `metadata must be at most ${this.settings.metadataMaxBytes} bytes of JSON`,
      });
    }
    if (item.embedding) {
      problems.push(...vectorProblems(item.embedding, dimension, `${field}.embedding`));
    }
    return problems;
  }

  /** Rows with embeddings: the client's, a stored one for unchanged content, or a new one. */
  private async prepare(dto: BatchUpsertDto, active: SlotRow | null): Promise<PreparedBatch> {
    const rows: ItemRow[] = dto.items.map((item) => ({
      obj_ref: item.obj_ref,
      item_id: item.id ?? null,
      content: item.content,
      content_hash: contentHash(item.content),
      metadata: item.metadata ?? null,
      embedding: item.embedding ?? [],
      embedding_source: item.embedding ? 'client' : 'provider',
      model: item.embedding ? null : this.embedder.model,
    }));
    const missing = rows.filter((row) => row.embedding_source === 'provider');
    if (missing.length === 0) {
      return { table: dto.table_name, namespace: dto.namespace, rows, embedded: 0, reused: 0 };
    }
    if (active && active.model !== this.embedder.model) {
      throw modelMismatch(dto.namespace, active.model, this.embedder.model);
    }
    let reused = 0;
    if (active) {
      // Only a source of embeddings to reuse: a slot dropped since it was looked up has none.
      const stored = await this.withClient((client) =>
        this.items.findByRefs(
          client,
          dto.table_name,
          active.id,
          missing.map((row) => row.obj_ref),
        ),
      ).catch((error: unknown) => {
        if (isUndefinedTable(error)) return new Map<string, ItemRow>();
        throw error;
      });
      for (const row of missing) {
        const previous = stored.get(row.obj_ref);
        if (
          previous?.embedding_source === 'provider' &&
          previous.model === this.embedder.model &&
          previous.content_hash.equals(row.content_hash)
        ) {
          row.embedding = previous.embedding;
          reused++;
        }
      }
    }
    const toEmbed = missing.filter((row) => row.embedding.length === 0);
    if (toEmbed.length > 0) {
      const vectors = await this.embedder.embed(toEmbed.map((row) => row.content));
      toEmbed.forEach((row, i) => (row.embedding = vectors[i]));
    }
    return {
      table: dto.table_name,
      namespace: dto.namespace,
      rows,
      embedded: toEmbed.length,
      reused,
    };
  }

  private async withClient<T>(work: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      return await work(client);
    } finally {
      client.release();
    }
  }
}

export function contentHash(content: string): Buffer {
  return createHash('sha256').update(content).digest();
}

/** Finite numbers (JSON allows 1e999 = Infinity), the slot's dimension, not all zeros (cosine). */
export function vectorProblems(vector: number[], dimension: number, field: string): FieldError[] {
  if (!vector.every((value) => typeof value === 'number' && Number.isFinite(value))) {
    return [{ field, message: 'must hold finite numbers only' }];
  }
  if (vector.length !== dimension) {
    return [{ field, message: `must have ${dimension} dimensions, not ${vector.length}` }];
  }
  if (vector.every((value) => value === 0)) {
    return [{ field, message: 'must not be all zeros (cosine distance is undefined)' }];
  }
  return [];
}
