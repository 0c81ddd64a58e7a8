import { Injectable, ServiceUnavailableException } from '@nestjs/common';
import { invalidRequest } from '../common/validation';
import { isUndefinedTable } from '../database/database-errors';
import { StatisticsQueryDto } from './dto/vector.dto';
import { ClientBase } from 'pg';
import {
  MEASURE_CHUNK,
  NamespaceWithSlots,
  SlotTable,
  SlotTableFacts,
  StatisticsRepository,
} from './repositories/statistics.repository';
import { unknownNamespace } from './vector.errors';
import { NAMESPACE_PATTERN, VectorTables } from './vector-tables';

export const STATISTICS_DEFAULT_LIMIT = 100;

/** Reads of a page that found a slot table dropped under them before they give up (503). */
const MAX_ATTEMPTS = 5;

interface MeasuredSlotTable extends SlotTableFacts {
  rows: number;
  bytes: number;
}

export interface SlotStatistics {
  slot: number;
  status: string;
  rows: number;
  size_bytes: number;
  index_present: boolean;
  index_valid: boolean;
}

export interface NamespaceStatistics {
  namespace: string;
  active_slot: number;
  building_slot: number | null;
  previous_slot: number | null;
  model: string | null;
  dimension: number | null;
  tables: Record<string, { slots: SlotStatistics[] }>;
}

export interface StatisticsPage {
  success: true;
  tables: string[];
  namespaces: NamespaceStatistics[];
  /** Pass as `cursor` for the next page; null on the last one. */
  next_cursor: string | null;
  /** Totals over this page: namespaces, slots listed, rows and bytes of their tables. */
  summary: { namespaces: number; slots: number; rows: number; bytes: number };
}

/**
 * GET /statistics: one page of namespaces in name order (keyset pagination, opaque cursor), with
 * rows, size and index state of every slot table, in a few set-based statements per page (see
 * StatisticsRepository) instead of several per namespace, table and slot.
 */
@Injectable()
export class StatisticsService {
  constructor(
    private readonly repository: StatisticsRepository,
    private readonly tables: VectorTables,
  ) {}

  async page(query: StatisticsQueryDto): Promise<StatisticsPage> {
    if (query.table_name !== undefined) this.tables.assertRegistered(query.table_name);
    const after = query.cursor === undefined ? null : decodeCursor(query.cursor);
    const limit = query.limit ?? STATISTICS_DEFAULT_LIMIT;
    const tables = query.table_name ? [query.table_name] : [...this.tables.names];
    // One more than asked: whether a next page exists, without a count.
    const found = await this.repository.namespacesPage(after, limit + 1, query.namespace ?? null);
    if (query.namespace !== undefined && found.length === 0 && after === null) {
      throw unknownNamespace(query.namespace);
    }
    const namespaces = found.slice(0, limit);
    const slotTables = namespaces.flatMap((namespace) =>
      namespace.slots.flatMap((slot) => tables.map((table) => ({ table, slotId: slot.id }))),
    );
    const measured = await this.measure(slotTables);
    const page = namespaces.map((namespace) => this.describe(namespace, tables, measured));
    const listed = page.flatMap((namespace) => Object.values(namespace.tables));
    const slots = listed.flatMap((table) => table.slots);
    return {
      success: true,
      tables,
      namespaces: page,
      next_cursor:
        found.length > limit ? encodeCursor(namespaces[namespaces.length - 1].namespace) : null,
      summary: {
        namespaces: page.length,
        slots: new Set(
          page.flatMap((namespace) =>
            Object.values(namespace.tables).flatMap((table) =>
              table.slots.map((slot) => `${namespace.namespace}/${slot.slot}`),
            ),
          ),
        ).size,
        rows: slots.reduce((sum, slot) => sum + slot.rows, 0),
        bytes: slots.reduce((sum, slot) => sum + slot.size_bytes, 0),
      },
    };
  }

  /**
   * Facts, row counts and sizes of the slot tables that exist, keyed by partition name. A
   * cleanup may detach and drop a table while the page is read: a table counted through its
   * parent that is no longer attached afterwards, or has no size any more, is left out, as it
   * would be had it gone a moment earlier; a standalone table dropped before its count makes
   * the count fail, and the catalog is read again.
   */
  private measure(slotTables: SlotTable[]): Promise<Map<string, MeasuredSlotTable>> {
    return this.repository.session(async (db) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.measureOn(db, slotTables);
        } catch (error) {
          if (!isUndefinedTable(error)) throw error;
          if (attempt >= MAX_ATTEMPTS) {
            throw new ServiceUnavailableException('Slot tables keep being dropped; retry.');
          }
        }
      }
    });
  }

  private async measureOn(
    db: ClientBase,
    slotTables: SlotTable[],
  ): Promise<Map<string, MeasuredSlotTable>> {
    const facts = await this.repository.slotTableFacts(db, slotTables);
    const existing = slotTables.flatMap((slotTable) => {
      const name = this.tables.partitionName(slotTable.table, slotTable.slotId);
      const found = facts.get(name);
      return found ? [{ ...slotTable, ...found, name }] : [];
    });
    const measured = new Map<string, MeasuredSlotTable>();
    for (let start = 0; start < existing.length; start += MEASURE_CHUNK) {
      const chunk = existing.slice(start, start + MEASURE_CHUNK);
      const { rows, sizes } = await this.repository.countAndSize(db, chunk);
      for (const slotTable of chunk) {
        const size = sizes.get(slotTable.oid);
        if (size?.bytes == null) continue;
        if (slotTable.attached && !size.attached) continue;
        measured.set(slotTable.name, {
          ...slotTable,
          // Counted through the parent: no row means no rows.
          rows: rows.get(slotTable.name) ?? 0,
          bytes: size.bytes,
        });
      }
    }
    return measured;
  }

  private describe(
    namespace: NamespaceWithSlots,
    tables: string[],
    measured: Map<string, MeasuredSlotTable>,
  ): NamespaceStatistics {
    const perTable: Record<string, { slots: SlotStatistics[] }> = {};
    for (const table of tables) {
      perTable[table] = {
        slots: namespace.slots.flatMap((slot) => {
          const found = measured.get(this.tables.partitionName(table, slot.id));
          if (!found) return [];
          return [
            {
              slot: slot.slot,
              status: slot.status,
              rows: found.rows,
              size_bytes: found.bytes,
              index_present: found.index_present,
              index_valid: found.index_valid,
            },
          ];
        }),
      };
    }
    const active = namespace.slots.find((slot) => slot.slot === namespace.active_slot);
    return {
      namespace: namespace.namespace,
      active_slot: namespace.active_slot,
      building_slot: namespace.building_slot,
      previous_slot: namespace.previous_slot,
      model: active?.model ?? null,
      dimension: active?.dimension ?? null,
      tables: perTable,
    };
  }
}

const CURSOR_VERSION = 1;

/** Opaque to clients: the last namespace of the page, versioned, base64url. */
export function encodeCursor(lastNamespace: string): string {
  return Buffer.from(JSON.stringify({ v: CURSOR_VERSION, after: lastNamespace })).toString(
    'base64url',
  );
}

export function decodeCursor(cursor: string): string {
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    decoded = undefined;
  }
  const { v, after } = (decoded ?? {}) as { v?: unknown; after?: unknown };
  if (v !== CURSOR_VERSION || typeof after !== 'string' || !NAMESPACE_PATTERN.test(after)) {
    throw invalidRequest([
      { field: 'cursor', message: 'not a cursor this service handed out (use next_cursor)' },
    ]);
  }
  return after;
}
