import { Readable } from 'node:stream';
import { Injectable, Logger, ServiceUnavailableException } from '@nestjs/common';
import { FieldError } from '../common/problem';
import { invalidRequest } from '../common/validation';
import { isUndefinedTable } from '../database/database-errors';
import { EXPORT_DEFAULT_LIMIT, ExportItemsQueryDto, FetchItemsDto } from './dto/items.dto';
import { ItemReadsRepository, PageEnd, StoredItemText } from './repositories/item-reads.repository';
import { NamespaceRepository } from './repositories/namespace.repository';
import { unknownNamespace } from './vector.errors';
import { VectorTables } from './vector-tables';
import { SlotRow } from './vector.types';

/** Namespaces whose active slot a replica remembers for reads (cleared when full). */
const READ_SLOT_CACHE_SIZE = 10_000;
/** Reads of one page or fetch tried again after finding their slot switched away from. */
const MAX_SLOT_RETRIES = 3;
/**
 * Items per page of an NDJSON export (one transaction and COPY each), about 4 MB with 384-number
 * embeddings and 1 MB without. Pages stream through as Postgres sends them, so the service's
 * memory does not depend on this; longer pages mean fewer round trips between pages, shorter ones
 * a shorter hold on a pool connection and a snapshot.
 */
export const streamPageRows = (withEmbeddings: boolean) => (withEmbeddings ? 1_000 : 10_000);

/** An item as the API returns it (JSON pages, fetch). */
export interface ItemJson {
  obj_ref: string;
  id: string | null;
  content: string;
  metadata: Record<string, unknown> | null;
  embedding?: number[];
}

/** Where an export page left off: its table and namespace, the slot it read and its last key. */
interface ExportCursor {
  t: string;
  n: string;
  s: number;
  k: string;
}

/**
 * Fetch by obj_ref and export of a namespace's active slot (JSON keyset pages, NDJSON stream).
 * Every read is guarded against a slot switch (ItemReadsRepository): it runs again on the new
 * active slot when it finds the one it used switched away from or dropped.
 *
 * Export semantics: pages and the stream walk the active slot in obj_ref order, each page
 * after the last obj_ref of the previous one. An item present for the whole export appears
 * exactly once; one upserted during it appears at most once (once if its obj_ref is after
 * the position the export had reached, with whatever content was stored when its page was read).
 * When a rebuild or rollback switches the active slot between pages, the export carries on in
 * the new slot after the same obj_ref: the new slot holds every obj_ref the old one held, so the
 * guarantee holds across the switch.
 */
@Injectable()
export class ItemsService {
  private readonly logger = new Logger(ItemsService.name);
  private readonly readSlots = new Map<string, SlotRow>();

  constructor(
    private readonly tables: VectorTables,
    private readonly namespaces: NamespaceRepository,
    private readonly reads: ItemReadsRepository,
  ) {}

  async fetch(dto: FetchItemsDto) {
    this.tables.assertRegistered(dto.table_name);
    const seen = new Set<string>();
    const problems: FieldError[] = [];
    dto.obj_refs.forEach((objRef, i) => {
      if (seen.has(objRef)) {
        problems.push({
          field: `obj_refs[${i}]`,
          message: 'obj_ref appears twice in this request',
        });
      }
      seen.add(objRef);
    });
    if (problems.length > 0) throw invalidRequest(problems);
    const { slot, read } = await this.readActive(dto.namespace, (current) =>
      this.reads.byRefs(dto.table_name, current, dto.obj_refs, dto.include_embeddings),
    );
    const found = new Map(read.items.map((item) => [item.obj_ref, item]));
    const items: ItemJson[] = [];
    const notFound: string[] = [];
    for (const objRef of dto.obj_refs) {
      const item = found.get(objRef);
      if (item) items.push(toJson(item, dto.include_embeddings));
      else notFound.push(objRef);
    }
    return {
      success: true as const,
      namespace: dto.namespace,
      slot: slot.slot,
      items,
      not_found: notFound,
    };
  }

  /** One JSON page of at most `limit` items, and the cursor of the next (null at the end). */
  async exportPage(query: ExportItemsQueryDto) {
    this.tables.assertRegistered(query.table_name);
    const limit = query.limit ?? EXPORT_DEFAULT_LIMIT;
    const withEmbeddings = query.include_embeddings ?? false;
    const after = query.cursor === undefined ? '' : this.decodeCursor(query).k;
    // One row more than asked for tells whether another page follows.
    const { slot, read } = await this.readActive(query.namespace, (current) =>
      this.reads.page(query.table_name, current, after, limit + 1, withEmbeddings),
    );
    const page = read.items.slice(0, limit);
    const more = read.items.length > limit;
    return {
      success: true as const,
      namespace: query.namespace,
      slot: slot.slot,
      items: page.map((item) => toJson(item, withEmbeddings)),
      next_cursor: more
        ? encodeCursor({
            t: query.table_name,
            n: query.namespace,
            s: slot.slot,
            k: page[page.length - 1].obj_ref,
          })
        : null,
    };
  }

  /**
   * Every item of the active slot as NDJSON, read in keyset pages (streamPageRows). The first
   * page is read before this resolves, so an unknown namespace or table (or Postgres being down)
   * is still an ordinary error answer; later bytes are read from Postgres as the client takes
   * the earlier ones (a pull stream: back-pressure reaches the COPY). A failure after the first byte
   * destroys the stream, and the server then ends the response without its final chunk, which
   * clients see as a truncated (failed) transfer: a complete export is one that ended cleanly.
   * A client that goes away destroys the stream too: the page being sent has its connection
   * closed, and nothing more is read. No pool connection is held between pages.
   */
  async exportStream(query: ExportItemsQueryDto): Promise<Readable> {
    this.tables.assertRegistered(query.table_name);
    const problems: FieldError[] = [];
    if (query.cursor !== undefined) {
      problems.push({ field: 'cursor', message: 'applies to JSON pages, not the NDJSON stream' });
    }
    if (query.limit !== undefined) {
      problems.push({ field: 'limit', message: 'applies to JSON pages, not the NDJSON stream' });
    }
    if (problems.length > 0) throw invalidRequest(problems);
    const pages = this.ndjsonPages(
      query.table_name,
      query.namespace,
      query.include_embeddings ?? false,
    );
    // The first page is begun here, so errors before the first byte are ordinary answers.
    const first = await pages.next();
    const logger = this.logger;
    async function* chunks(): AsyncGenerator<Buffer> {
      try {
        if (first.done) return;
        yield first.value;
        yield* pages;
      } catch (error) {
        logger.warn(
          `export of ${query.table_name}/${query.namespace} failed mid-stream: ${(error as Error).message}`,
        );
        throw error;
      }
    }
    const stream = Readable.from(chunks(), { highWaterMark: 1 });
    // Once the stream is closed, `pages` is stopped, which closes the connection of the page it
    // was sending. Needed beyond the generators' own clean-up: a stream destroyed before it
    // started reading (a HEAD request, a client gone before the first chunk was taken) never
    // runs `chunks`, whose `yield*` would otherwise pass the stop on. Stopping a finished
    // generator does nothing.
    stream.once('close', () => void pages.return(undefined).catch(() => undefined));
    return stream;
  }

  /**
   * The NDJSON bytes of every item of the active slot, page after page. A page that finds its
   * slot switched away from (or dropped) has sent nothing, and is read again from the new one,
   * after the same obj_ref.
   */
  private async *ndjsonPages(
    table: string,
    namespace: string,
    withEmbeddings: boolean,
  ): AsyncGenerator<Buffer> {
    const pageRows = streamPageRows(withEmbeddings);
    let slot = await this.slotOf(namespace);
    let after = '';
    for (;;) {
      let end: PageEnd | null = null;
      for (let attempt = 0; ; attempt++) {
        try {
          end = yield* this.reads.ndjsonPage(table, slot, after, pageRows, withEmbeddings);
        } catch (error) {
          // The slot's tables were dropped meanwhile (its guard statement failed: nothing sent).
          if (!isUndefinedTable(error) || attempt >= MAX_SLOT_RETRIES) throw error;
          end = null;
        }
        if (end?.activeSlot === slot.slot) break;
        if (end && end.activeSlot === null) {
          this.readSlots.delete(namespace);
          throw unknownNamespace(namespace);
        }
        if (attempt >= MAX_SLOT_RETRIES) {
          throw new ServiceUnavailableException('The namespace keeps switching.');
        }
        slot = await this.slotOf(namespace, true);
      }
      if (end.rows < pageRows) return;
      after = end.last!;
    }
  }

  /**
   * Runs `read` on the namespace's active slot (cached, or `start`) until the read confirms
   * that slot was still active in its own snapshot; a switch since the lookup costs one more
   * statement. Bounded: a namespace switching on every try is not worth chasing.
   */
  private async readActive<R extends { activeSlot: number | null }>(
    namespace: string,
    read: (slot: SlotRow) => Promise<R>,
    start?: SlotRow,
  ): Promise<{ slot: SlotRow; read: R }> {
    let slot = start ?? (await this.slotOf(namespace));
    for (let attempt = 0; ; attempt++) {
      const outcome = await read(slot).catch((error: unknown) => {
        // The slot was switched away from and its tables dropped meanwhile.
        if (isUndefinedTable(error) && attempt < MAX_SLOT_RETRIES) return null;
        throw error;
      });
      if (outcome?.activeSlot === slot.slot) return { slot, read: outcome };
      if (outcome && outcome.activeSlot === null) {
        this.readSlots.delete(namespace);
        throw unknownNamespace(namespace);
      }
      if (attempt >= MAX_SLOT_RETRIES) {
        throw new ServiceUnavailableException('The namespace keeps switching.');
      }
      slot = await this.slotOf(namespace, true);
    }
  }

  /** The namespace's active slot, cached: only a guess, which every read checks. */
  private async slotOf(namespace: string, refresh = false): Promise<SlotRow> {
    const cached = refresh ? undefined : this.readSlots.get(namespace);
    if (cached) return cached;
    const row = await this.namespaces.find(namespace);
    const slot = row ? await this.namespaces.slot(namespace, row.active_slot) : null;
    if (!slot) {
      this.readSlots.delete(namespace);
      throw unknownNamespace(namespace);
    }
    if (this.readSlots.size >= READ_SLOT_CACHE_SIZE) this.readSlots.clear();
    this.readSlots.set(namespace, slot);
    return slot;
  }

  private decodeCursor(query: ExportItemsQueryDto): ExportCursor {
    const bad = (message: string) => invalidRequest([{ field: 'cursor', message }]);
    let cursor: unknown;
    try {
      cursor = JSON.parse(Buffer.from(query.cursor!, 'base64url').toString('utf8'));
    } catch {
      throw bad('not a cursor this service issued');
    }
    if (!isExportCursor(cursor)) throw bad('not a cursor this service issued');
    if (cursor.t !== query.table_name || cursor.n !== query.namespace) {
      throw bad('belongs to an export of another table or namespace');
    }
    return cursor;
  }
}

function isExportCursor(value: unknown): value is ExportCursor {
  if (typeof value !== 'object' || value === null) return false;
  const { t, n, s, k } = value as Record<string, unknown>;
  return (
    typeof t === 'string' &&
    typeof n === 'string' &&
    typeof s === 'number' &&
    Number.isSafeInteger(s) &&
    s > 0 &&
    typeof k === 'string' &&
    k.length > 0
  );
}

function encodeCursor(cursor: ExportCursor): string {
  return Buffer.from(JSON.stringify(cursor)).toString('base64url');
}

function toJson(item: StoredItemText, withEmbedding: boolean): ItemJson {
  const json: ItemJson = {
    obj_ref: item.obj_ref,
    id: item.item_id,
    content: item.content,
    metadata: item.metadata === null ? null : (JSON.parse(item.metadata) as ItemJson['metadata']),
  };
  if (withEmbedding) json.embedding = JSON.parse(item.embedding!) as number[];
  return json;
}
