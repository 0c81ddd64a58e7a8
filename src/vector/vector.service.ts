import { createHash } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { Pool, PoolClient } from 'pg';
import { FieldError } from '../common/problem';
import { invalidRequest } from '../common/validation';
import { PG_POOL } from '../database/database.constants';
import { withTransaction } from '../database/transaction';
import { EMBEDDING_PROVIDER } from '../embedding/embedding.module';
import { EmbeddingProvider } from '../embedding/embedding.types';
import { LockService, PostgresFencing, WithLock } from '../lock';
import { BatchUpsertDto, SearchDto, StatisticsQueryDto } from './dto/vector.dto';
import { NamespaceRepository } from './repositories/namespace.repository';
import { VectorItemRepository } from './repositories/vector-item.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { modelMismatch, unknownNamespace } from './vector.errors';
import { VectorSettings } from './vector-settings';
import { VectorTables } from './vector-tables';
import { ItemRow, SlotRow } from './vector.types';

const SEARCH_SLOT_CACHE_MS = 1_000;
const UNDEFINED_TABLE = '42P01';

export const upsertLockKey = (table: string, namespace: string) =>
  `lock:vector:upsert:${table}:${namespace}`;

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

/**
 * Upserts, search, statistics: orchestration over the repositories. Embeddings are computed
 * before the lock is taken, so the lock is held for the write alone.
 */
@Injectable()
export class VectorService {
  private readonly fencing = new PostgresFencing();
  private readonly searchSlots = new Map<string, { slot: SlotRow; until: number }>();

  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    @Inject(EMBEDDING_PROVIDER) private readonly embedder: EmbeddingProvider,
    private readonly tables: VectorTables,
    private readonly settings: VectorSettings,
    private readonly namespaces: NamespaceRepository,
    private readonly items: VectorItemRepository,
    private readonly schema: VectorSchemaRepository,
    private readonly locks: LockService,
  ) {}

  async batchUpsert(dto: BatchUpsertDto): Promise<UpsertResult> {
    this.assertTable(dto.table_name, 'table_name');
    const active = await this.activeSlot(dto.namespace);
    const dimension = active?.dimension ?? this.embedder.dimension;
    this.validateBatch(dto, dimension);
    const batch = await this.prepare(dto, active);
    const slot = await this.write(batch);
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
   * the active slot — and into the building slot while a rebuild runs, so the switch loses none.
   * The namespace row is held FOR SHARE: a rebuild's switch waits for this write to commit.
   */
  @WithLock({
    key: (batch: PreparedBatch) => upsertLockKey(batch.table, batch.namespace),
    operation: 'batch-upsert',
  })
  async write(batch: PreparedBatch): Promise<number> {
    const lock = this.locks.current(upsertLockKey(batch.table, batch.namespace))!;
    return this.transaction(async (client) => {
      const namespace =
        (await this.namespaces.lockForWrite(client, batch.namespace)) ??
        (await this.createNamespace(client, batch.namespace));
      await this.fencing.check(client, lock);
      const active = await this.namespaces.slot(batch.namespace, namespace.active_slot, client);
      await this.items.upsert(client, batch.table, active!.id, batch.rows);
      if (namespace.building_slot !== null) {
        const building = await this.namespaces.slot(
          batch.namespace,
          namespace.building_slot,
          client,
        );
        if (building) {
          const rows = batch.rows.filter((row) => row.embedding.length === building.dimension);
          await this.items.upsert(client, batch.table, building.id, rows);
        }
      }
      return namespace.active_slot;
    });
  }

  async search(dto: SearchDto) {
    this.assertTable(dto.table_name, 'table_name');
    if ((dto.query === undefined) === (dto.vector === undefined)) {
      throw invalidRequest([{ field: 'query', message: 'send exactly one of query or vector' }]);
    }
    try {
      return await this.searchSlotOf(await this.searchSlot(dto.namespace), dto);
    } catch (error) {
      // The cached slot was switched away from and dropped meanwhile: look it up afresh (the new
      // slot may have another model or dimension, so the query vector is made again too).
      if ((error as { code?: string }).code !== UNDEFINED_TABLE) throw error;
      this.searchSlots.delete(dto.namespace);
      return this.searchSlotOf(await this.searchSlot(dto.namespace), dto);
    }
  }

  private async searchSlotOf(slot: SlotRow, dto: SearchDto) {
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
    const hits = await this.items.search(
      dto.table_name,
      slot.id,
      slot.dimension,
      vector,
      dto.k,
      Math.max(dto.k, this.settings.efSearch),
      this.settings.efSearch,
    );
    return {
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
    };
  }

  /**
   * The active slot for searches, cached for a second per namespace: a search right after a
   * switch may still read the previous slot (which stays until cleanup), never a wrong one.
   */
  private async searchSlot(namespace: string): Promise<SlotRow> {
    const cached = this.searchSlots.get(namespace);
    if (cached && cached.until > performance.now()) return cached.slot;
    const slot = await this.activeSlot(namespace);
    if (!slot) throw unknownNamespace(namespace);
    this.searchSlots.set(namespace, { slot, until: performance.now() + SEARCH_SLOT_CACHE_MS });
    return slot;
  }

  async statistics(query: StatisticsQueryDto) {
    if (query.table_name !== undefined) this.assertTable(query.table_name, 'table_name');
    const tables = query.table_name ? [query.table_name] : [...this.tables.names];
    const namespaces = (await this.namespaces.namespaces()).filter(
      (row) => query.namespace === undefined || row.namespace === query.namespace,
    );
    if (query.namespace !== undefined && namespaces.length === 0) {
      throw unknownNamespace(query.namespace);
    }
    const slots = await this.namespaces.slots(query.namespace);
    const result = [];
    for (const namespace of namespaces) {
      const perTable: Record<string, unknown> = {};
      for (const table of tables) {
        const slotStats = [];
        for (const slot of slots.filter((row) => row.namespace === namespace.namespace)) {
          if (!(await this.schema.slotTableExists(table, slot.id))) continue;
          const stats = await this.items.stats(table, slot.id);
          const index = await this.schema.indexState(table, slot.id);
          slotStats.push({
            slot: slot.slot,
            status: slot.status,
            rows: stats.rows,
            size_bytes: stats.bytes,
            index_present: index.exists,
            index_valid: index.valid,
          });
        }
        perTable[table] = { slots: slotStats };
      }
      const active = slots.find(
        (row) => row.namespace === namespace.namespace && row.slot === namespace.active_slot,
      );
      result.push({
        namespace: namespace.namespace,
        active_slot: namespace.active_slot,
        building_slot: namespace.building_slot,
        previous_slot: namespace.previous_slot,
        model: active?.model ?? null,
        dimension: active?.dimension ?? null,
        tables: perTable,
      });
    }
    return { success: true as const, tables, namespaces: result };
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
    await this.schema.createSlotTables(client, slot!.id, slot!.dimension, true);
    for (const table of this.tables.names) {
      await this.schema.createEmptyIndex(
        client,
        table,
        slot!.id,
        slot!.dimension,
        await this.settings.indexSettings(),
      );
    }
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
      if (Buffer.byteLength(item.content) > this.settings.contentMaxBytes) {
        problems.push({
          field: `items[${i}].content`,
          message: `content must be at most ${this.settings.contentMaxBytes} bytes`,
        });
      }
      if (
        item.metadata !== undefined &&
        Buffer.byteLength(JSON.stringify(item.metadata)) > this.settings.metadataMaxBytes
      ) {
        problems.push({
          field: `items[${i}].metadata`,
          message: `metadata must be at most ${this.settings.metadataMaxBytes} bytes of JSON`,
        });
      }
      if (item.embedding)
        problems.push(...vectorProblems(item.embedding, dimension, `items[${i}].embedding`));
    });
    if (problems.length > 0) throw invalidRequest(problems);
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
      const stored = await this.withClient((client) =>
        this.items.findByRefs(
          client,
          dto.table_name,
          active.id,
          missing.map((row) => row.obj_ref),
        ),
      );
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

  private assertTable(table: string, field: string): void {
    if (!this.tables.has(table)) {
      throw invalidRequest([
        { field, message: `unknown table; registered tables: ${this.tables.names.join(', ')}` },
      ]);
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
