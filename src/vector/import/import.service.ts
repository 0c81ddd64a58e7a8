import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  BadRequestException,
  ConflictException,
  HttpException,
  Inject,
  Injectable,
  Logger,
  OnApplicationBootstrap,
  PayloadTooLargeException,
} from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { validateSync } from 'class-validator';
import { ClientBase, Pool } from 'pg';
import { FieldError, problem } from '../../common/problem';
import { flattenValidationErrors, invalidRequest } from '../../common/validation';
import { Env } from '../../config/env.schema';
import { PG_POOL } from '../../database/database.constants';
import { DedicatedConnections } from '../../database/dedicated-connections';
import { EMBEDDING_PROVIDER } from '../../embedding/embedding.module';
import { EmbeddingProvider } from '../../embedding/embedding.types';
import { UpsertItemDto } from '../dto/vector.dto';
import { RebuildService } from '../rebuild.service';
import { copyHeader, copyTrailer, encodeItem } from '../repositories/binary-copy';
import { ImportRecord, ImportRepository } from '../repositories/import.repository';
import { VectorItemRepository } from '../repositories/vector-item.repository';
import { VectorSchemaRepository } from '../repositories/vector-schema.repository';
import { modelMismatch } from '../vector.errors';
import { contentHash, VectorService } from '../vector.service';
import { VectorSettings } from '../vector-settings';
import { VectorTables } from '../vector-tables';
import { ItemRow, SlotRow } from '../vector.types';
import { LineTooLongError, numberedLines } from './ndjson-body';

/** Lines without an embedding are embedded this many at a time. */
const EMBED_BATCH = 512;
/** Encoded rows are handed to COPY in chunks of about this size. */
const COPY_CHUNK_BYTES = 256 * 1024;
/** Progress (lines, rows) is recorded every this many lines. */
const PROGRESS_EVERY_LINES = 10_000;
/** The fields of an item line; anything else on a line is refused, as in batch-upsert. */
const ITEM_FIELDS = new Set(['obj_ref', 'content', 'id', 'metadata', 'embedding']);

export interface ImportResult {
  success: true;
  import_id: string;
  namespace: string;
  table_name: string;
  /** `merge`: into the active slot; `slot`: a new slot, indexed once and switched to. */
  mode: 'merge' | 'slot';
  lines: number;
  processed: number;
  embedded: number;
  slot: number;
  previous_slot: number | null;
  duration_ms: number;
}

/** What the received lines hold, beyond the rows themselves (now in the staging table). */
interface Received {
  lines: number;
  rows: number;
  embedded: number;
  /** The dimension of the client-sent embeddings (all the same), null if none were sent. */
  clientDimension: number | null;
  /** Some lines had no embedding: the provider made theirs. */
  providerRows: boolean;
}

/**
 * Streamed NDJSON imports (POST /import): every line is validated like a batch-upsert item and
 * bulk-loaded with binary COPY into an unlogged staging table owned by the import, while the
 * body is still arriving. Nothing reaches a slot before the last line is in: then the staged rows
 * are either merged into the active slot in one fenced transaction under the upsert lock (as a
 * batch-upsert would write them, building slot of a live rebuild included), or — for an empty
 * namespace or an import larger than the active slot — loaded into a new slot that is indexed
 * once and switched to (the rebuild path). A bad line fails the import with its number, and
 * nothing is written.
 *
 * The import runs on a connection of its own that holds a session advisory lock on its key; a
 * process that dies mid-import leaves a progress row that reads `abandoned` at once and a
 * staging table that the next import, or the next start of any replica, drops.
 */
@Injectable()
export class ImportService implements OnApplicationBootstrap {
  private readonly logger = new Logger('ImportService');
  private readonly maxLines: number;
  private readonly maxLineChars: number;

  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    private readonly connections: DedicatedConnections,
    @Inject(EMBEDDING_PROVIDER) private readonly embedder: EmbeddingProvider,
    private readonly tables: VectorTables,
    private readonly settings: VectorSettings,
    private readonly vectors: VectorService,
    private readonly rebuilds: RebuildService,
    private readonly imports: ImportRepository,
    private readonly items: VectorItemRepository,
    private readonly schema: VectorSchemaRepository,
    config: ConfigService<Env, true>,
  ) {
    this.maxLines = config.get('IMPORT_MAX_LINES', { infer: true });
    // JSON may escape every character of content and metadata in six; a vector of the largest
    // dimension is at most ~25 characters a number.
    this.maxLineChars =
      6 * (this.settings.contentMaxBytes + this.settings.metadataMaxBytes) + 16_000 * 25 + 65_536;
  }

  async onApplicationBootstrap(): Promise<void> {
    await this.sweep().catch((error: unknown) =>
      this.logger.warn(`could not clean up after abandoned imports: ${String(error)}`),
    );
  }

  /**
   * Drops the staging tables of imports whose connection is gone (their process died) and
   * records those still marked running as abandoned. Returns how many it dropped.
   */
  async sweep(): Promise<number> {
    let dropped = 0;
    for (const record of await this.imports.orphans()) {
      if (record.abandoned && record.mode === 'slot') {
        // It died loading a new slot: that slot goes as a dead rebuild's does.
        await this.rebuilds.dropAbandonedBuilds(record.namespace);
      }
      if (!this.tables.has(record.table_name)) continue;
      await this.imports.dropStaging(this.pool, record);
      dropped++;
      this.logger.warn(`dropped the staging table of import ${record.id}, whose process is gone`);
    }
    return dropped;
  }

  async progress(id: string) {
    return this.imports.find(id);
  }

  async latest(namespace: string) {
    return this.imports.latest(namespace);
  }

  async import(
    table: string,
    namespace: string,
    body: Readable,
    requestedId?: string,
  ): Promise<ImportResult> {
    const started = performance.now();
    try {
      this.tables.assertRegistered(table);
      await this.sweep().catch((error: unknown) =>
        this.logger.warn(`could not clean up after abandoned imports: ${String(error)}`),
      );
      return await this.run(table, namespace, body, requestedId ?? randomUUID(), started);
    } finally {
      // A failure before the last line (a bad line, say): the rest of the body is read and
      // discarded, so the client can finish sending and read the answer.
      if (!body.readableEnded) body.resume();
    }
  }

  private async run(
    table: string,
    namespace: string,
    body: Readable,
    id: string,
    started: number,
  ): Promise<ImportResult> {
    const session = await this.connections.open('import');
    let record: ImportRecord | null = null;
    try {
      record = await this.imports.begin(session, id, namespace, table);
      if (!record) throw new ConflictException(`An import with id ${id} exists already.`);
      const active = await this.vectors.activeSlot(namespace);
      const received = await this.receive(session, record, body, active);
      const target = await this.write(record, received);
      await this.imports.update(id, { status: 'succeeded', slot: target.slot });
      return {
        success: true,
        import_id: id,
        namespace,
        table_name: table,
        mode: target.mode,
        lines: received.lines,
        processed: received.rows,
        embedded: received.embedded,
        slot: target.slot,
        previous_slot: target.previousSlot,
        duration_ms: Math.round(performance.now() - started),
      };
    } catch (error) {
      if (record) {
        await this.imports
          .update(id, { status: 'failed', error: describe(error) })
          .catch(() => undefined);
      }
      throw error;
    } finally {
      if (record) {
        // Left behind if this fails: the next sweep drops it once this connection has ended.
        await this.imports
          .dropStaging(session, record)
          .catch((error: unknown) =>
            this.logger.warn(`could not drop the staging table of import ${id}: ${String(error)}`),
          );
      }
      await session.end().catch(() => undefined);
    }
  }

  /**
   * Reads, validates and embeds the lines and streams them into the staging table with one
   * binary COPY. A bad line throws (400 naming it); the COPY is then aborted.
   */
  private async receive(
    session: ClientBase,
    record: ImportRecord,
    body: Readable,
    active: SlotRow | null,
  ): Promise<Received> {
    const received: Received = {
      lines: 0,
      rows: 0,
      embedded: 0,
      clientDimension: null,
      providerRows: false,
    };
    await this.imports.copyIntoStaging(
      session,
      record,
      this.encodeLines(body, record, active, received),
    );
    if (received.rows === 0) {
      throw invalidRequest([
        { field: '', message: 'the body holds no items (one JSON object a line)' },
      ]);
    }
    await this.imports.update(record.id, {
      lines: received.lines,
      rows: received.rows,
      embedded: received.embedded,
    });
    return received;
  }

  /** The lines as binary COPY data (header, tuples in chunks, trailer), counted in `received`. */
  private async *encodeLines(
    body: Readable,
    record: ImportRecord,
    active: SlotRow | null,
    received: Received,
  ): AsyncGenerator<Buffer> {
    const dimension = active?.dimension ?? this.embedder.dimension;
    const seen = new Map<string, number>();
    const pending: ItemRow[] = [];
    let chunk: Buffer[] = [];
    let chunkBytes = 0;
    const take = (row: ItemRow) => {
      const tuple = encodeItem(0, row);
      chunk.push(tuple);
      chunkBytes += tuple.length;
    };
    const flush = () => {
      const out = Buffer.concat(chunk, chunkBytes);
      chunk = [];
      chunkBytes = 0;
      return out;
    };
    const embedPending = async () => {
      if (pending.length === 0) return;
      const vectors = await this.embedder.embed(pending.map((row) => row.content));
      pending.forEach((row, i) => {
        row.embedding = vectors[i];
        take(row);
      });
      received.embedded += pending.length;
      pending.length = 0;
    };
    yield copyHeader();
    try {
      for await (const { line, text } of numberedLines(body, this.maxLineChars)) {
        received.lines = line;
        if (text.trim() === '') continue;
        if (received.rows >= this.maxLines) {
          throw new PayloadTooLargeException(
            problem(413, `An import holds at most ${this.maxLines} lines (IMPORT_MAX_LINES).`, {
              line,
            }),
          );
        }
        const row = this.parseLine(line, text, dimension, seen);
        if (row.embedding_source === 'provider') {
          if (active && active.model !== this.embedder.model) {
            throw modelMismatch(record.namespace, active.model, this.embedder.model);
          }
          received.providerRows = true;
          pending.push(row);
          if (pending.length >= EMBED_BATCH) await embedPending();
        } else {
          received.clientDimension = row.embedding.length;
          take(row);
        }
        received.rows++;
        if (chunkBytes >= COPY_CHUNK_BYTES) yield flush();
        if (line % PROGRESS_EVERY_LINES === 0) {
          await this.imports.update(record.id, {
            lines: received.lines,
            rows: received.rows,
            embedded: received.embedded,
          });
        }
      }
    } catch (error) {
      if (error instanceof LineTooLongError) {
        throw lineError(error.line, [{ field: `lines[${error.line}]`, message: error.message }]);
      }
      throw error;
    }
    await embedPending();
    if (chunkBytes > 0) yield flush();
    yield copyTrailer();
  }

  /** One line as an item row (embedding still empty when the provider is to make it). */
  private parseLine(
    line: number,
    text: string,
    dimension: number,
    seen: Map<string, number>,
  ): ItemRow {
    const field = `lines[${line}]`;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw lineError(line, [{ field, message: `not valid JSON: ${(error as Error).message}` }]);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw lineError(line, [{ field, message: 'must be a JSON object (one item)' }]);
    }
    const fields = value as Record<string, unknown>;
    const problems: FieldError[] = Object.keys(fields)
      .filter((key) => !ITEM_FIELDS.has(key))
      .map((key) => ({ field: `${field}.${key}`, message: `property ${key} should not exist` }));
    // Only the known fields are copied: a `__proto__` key of the line never reaches the DTO.
    const item = new UpsertItemDto();
    item.obj_ref = fields.obj_ref as string;
    item.content = fields.content as string;
    if (fields.id !== undefined) item.id = fields.id as string;
    if (fields.metadata !== undefined) item.metadata = fields.metadata as Record<string, unknown>;
    if (fields.embedding !== undefined) item.embedding = fields.embedding as number[];
    problems.push(...flattenValidationErrors(validateSync(item), field));
    if (problems.length === 0) problems.push(...this.vectors.itemProblems(item, dimension, field));
    if (problems.length > 0) throw lineError(line, problems);
    const earlier = seen.get(item.obj_ref);
    if (earlier !== undefined) {
      throw lineError(line, [
        {
          field: `${field}.obj_ref`,
          message: `obj_ref ${item.obj_ref} is on line ${earlier} too; an import holds each obj_ref once`,
        },
      ]);
    }
    seen.set(item.obj_ref, line);
    return {
      obj_ref: item.obj_ref,
      item_id: item.id ?? null,
      content: item.content,
      content_hash: contentHash(item.content),
      metadata: item.metadata ?? null,
      embedding: item.embedding ?? [],
      embedding_source: item.embedding ? 'client' : 'provider',
      model: item.embedding ? null : this.embedder.model,
    };
  }

  /**
   * The staged rows into the namespace: a new slot (empty namespace, or more rows than the active
   * slot holds in all its tables, when that slot is of the provider's model and dimension and the
   * rebuild lock is free), else a merge into the active slot.
   */
  private async write(
    record: ImportRecord,
    received: Received,
  ): Promise<{ mode: 'merge' | 'slot'; slot: number; previousSlot: number | null }> {
    const { namespace, table_name: table } = record;
    const active = await this.vectors.activeSlot(namespace);
    const fitsNewSlot =
      (active === null ||
        (active.model === this.embedder.model && active.dimension === this.embedder.dimension)) &&
      (received.clientDimension === null || received.clientDimension === this.embedder.dimension);
    // The new slot holds every table of the namespace: what it costs is the whole slot's size.
    const larger = active === null || received.rows > (await this.slotSize(active, received.rows));
    if (fitsNewSlot && larger) {
      await this.imports.update(record.id, { status: 'loading', mode: 'slot' });
      // The namespace (slot 1, empty) as the first upsert would make it; the new slot follows.
      if (!active) {
        await this.vectors.write({ table, namespace, rows: [], embedded: 0, reused: 0 });
      }
      const rebuilt = await this.rebuilds.rebuildWithImport(namespace, {
        load: (client, target) =>
          this.imports.copyStaged(
            client,
            record,
            this.tables.partition(table, target.id),
            target.id,
            0,
            false,
          ),
        onPhase: (phase) => this.imports.update(record.id, { status: phase }),
      });
      if (rebuilt) return { mode: 'slot', slot: rebuilt.slot, previousSlot: rebuilt.previous_slot };
      this.logger.log(`a rebuild of ${namespace} is running: import ${record.id} merges instead`);
    }
    await this.imports.update(record.id, { status: 'loading', mode: 'merge' });
    const { slot } = await this.vectors.writeStaged({
      table,
      namespace,
      assertWritable: (slot) => this.assertWritable(namespace, slot, received),
      put: (client, slotId, epoch, into) =>
        this.imports.copyStaged(
          client,
          record,
          into === 'slot' ? this.tables.partition(table, slotId) : this.tables.delta(table, slotId),
          slotId,
          epoch,
          true,
        ),
    });
    return { mode: 'merge', slot, previousSlot: null };
  }

  /**
   * Items in a slot, all tables together — exactly only when it matters: the planner's estimate
   * (kept by ANALYZE and VACUUM) settles a slot clearly larger than `rows` without a count,
   * which reads the whole table; a low or missing estimate (a slot filled by upserts and never
   * analysed yet reads 0) is checked by counting.
   */
  private async slotSize(slot: SlotRow, rows: number): Promise<number> {
    const estimate = await this.imports.estimatedSlotRows(slot.id);
    if (estimate > 2 * rows) return estimate;
    let size = 0;
    for (const table of this.tables.names) {
      if (await this.schema.slotTableExists(table, slot.id)) {
        size += await this.items.count(table, slot.id);
      }
    }
    return size;
  }

  /** As VectorService.assertWritable, for the whole import (see write there). */
  private assertWritable(namespace: string, slot: SlotRow, received: Received): void {
    if (received.clientDimension !== null && received.clientDimension !== slot.dimension) {
      throw invalidRequest([
        {
          field: 'embedding',
          message:
            slot.status === 'building'
              ? `a rebuild of this namespace to ${slot.dimension} dimensions is running; send ` +
                `${slot.dimension}-dimensional vectors after it switches, or none`
              : `must have ${slot.dimension} dimensions, not ${received.clientDimension}`,
        },
      ]);
    }
    if (received.providerRows && slot.model !== this.embedder.model) {
      throw modelMismatch(namespace, slot.model, this.embedder.model);
    }
  }
}

/** A 400 naming the bad line: `line` as a member of the problem, and in every field path. */
function lineError(line: number, errors: FieldError[]): BadRequestException {
  return new BadRequestException(
    problem(400, `Line ${line} of the import is invalid; nothing was imported.`, {
      title: 'Validation failed',
      line,
      errors,
    }),
  );
}

function describe(error: unknown): string {
  if (error instanceof HttpException) {
    const response = error.getResponse();
    if (typeof response === 'object' && response !== null && 'detail' in response) {
      return String(response.detail);
    }
  }
  return error instanceof Error ? error.message : String(error);
}
