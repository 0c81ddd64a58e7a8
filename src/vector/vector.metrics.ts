import { Injectable, Logger } from '@nestjs/common';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SlotSizeRepository } from './repositories/slot-size.repository';

export type RebuildPhase = 'preparing' | 'loading' | 'indexing' | 'switching';
export type RebuildOutcomeLabel = 'succeeded' | 'failed' | 'superseded' | 'stopped';
export type SearchKind = 'query' | 'vector' | 'item';

/** How long a scrape reuses the active-slot row estimate: the catalog query stays rare. */
const SLOT_ROWS_CACHE_MS = 30_000;

/** One rebuild's phases as it goes; `end` records them all with the rebuild's outcome. */
export class RebuildTiming {
  private readonly phases: [RebuildPhase, number][] = [['preparing', performance.now()]];
  private ended = false;

  constructor(private readonly metrics: VectorMetrics) {}

  enter(phase: RebuildPhase): void {
    this.phases.push([phase, performance.now()]);
  }

  /** Idempotent: the first outcome given is the one recorded. */
  end(outcome: RebuildOutcomeLabel): void {
    if (this.ended) return;
    this.ended = true;
    const now = performance.now();
    this.phases.forEach(([phase, startedAt], i) => {
      const endedAt = i + 1 < this.phases.length ? this.phases[i + 1][1] : now;
      this.metrics.rebuildPhaseDuration.observe({ phase, outcome }, (endedAt - startedAt) / 1000);
    });
    this.metrics.rebuilds.inc({ outcome });
    this.metrics.rebuildRunning.dec();
  }
}

/**
 * The vector domain's metrics: items written and deleted, upsert and search latency per table,
 * rebuilds by phase and outcome, and (at scrape time) rows in the active slots. Labels are
 * bounded: table names come from VECTOR_TABLES, never namespaces or obj_refs.
 */
@Injectable()
export class VectorMetrics {
  private readonly logger = new Logger('VectorMetrics');
  readonly itemsUpserted: Counter<'table'>;
  readonly itemsDeleted: Counter<'table'>;
  readonly upsertDuration: Histogram<'table'>;
  readonly searchDuration: Histogram<'table' | 'kind' | 'filtered'>;
  readonly rebuildPhaseDuration: Histogram<'phase' | 'outcome'>;
  readonly rebuilds: Counter<'outcome'>;
  readonly rebuildRunning: Gauge;
  private slotRows: { at: number; rows: Promise<Map<string, number>> } | undefined;

  constructor(registry: Registry, slotSizes: SlotSizeRepository) {
    const registers = [registry];
    this.itemsUpserted = new Counter({
      name: 'vector_items_upserted_total',
      help: 'Items written into active slots, counted after the transaction committed.',
      labelNames: ['table'] as const,
      registers,
    });
    this.itemsDeleted = new Counter({
      name: 'vector_items_deleted_total',
      help: 'Items deleted from active slots, counted after the transaction committed.',
      labelNames: ['table'] as const,
      registers,
    });
    this.upsertDuration = new Histogram({
      name: 'vector_upsert_duration_seconds',
      help: 'Batch upsert latency (validation, embedding, locked write) of acknowledged batches.',
      labelNames: ['table'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.searchDuration = new Histogram({
      name: 'vector_search_duration_seconds',
      help: 'Search latency of answered searches, by kind (query, vector, item) and filter use.',
      labelNames: ['table', 'kind', 'filtered'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.rebuildPhaseDuration = new Histogram({
      name: 'vector_rebuild_phase_duration_seconds',
      help: 'Time rebuilds spent in each phase, labelled with how the rebuild ended.',
      labelNames: ['phase', 'outcome'] as const,
      buckets: [0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600],
      registers,
    });
    this.rebuilds = new Counter({
      name: 'vector_rebuilds_total',
      help: 'Rebuilds run by this replica, by outcome: succeeded, failed, superseded, stopped.',
      labelNames: ['outcome'] as const,
      registers,
    });
    this.rebuildRunning = new Gauge({
      name: 'vector_rebuild_running',
      help: 'Rebuilds running on this replica now.',
      registers,
    });
    const rowEstimates = () => this.activeSlotRows(slotSizes);
    new Gauge({
      name: 'vector_active_slot_rows',
      help:
        'Estimated rows in the active slots of all namespaces, per table (pg_class.reltuples, ' +
        'as of the last ANALYZE; cached 30 s).',
      labelNames: ['table'] as const,
      registers,
      async collect() {
        for (const [table, rows] of await rowEstimates()) this.set({ table }, rows);
      },
    });
  }

  startRebuild(): RebuildTiming {
    this.rebuildRunning.inc();
    return new RebuildTiming(this);
  }

  /** Cached for SLOT_ROWS_CACHE_MS; a failed read yields no sample rather than a failed scrape. */
  private activeSlotRows(slotSizes: SlotSizeRepository): Promise<Map<string, number>> {
    const now = Date.now();
    if (!this.slotRows || now - this.slotRows.at > SLOT_ROWS_CACHE_MS) {
      const rows = slotSizes.activeSlotRowEstimates().catch((error: unknown) => {
        this.logger.warn(`active slot row estimate failed: ${String(error)}`);
        this.slotRows = undefined;
        return new Map<string, number>();
      });
      this.slotRows = { at: now, rows };
    }
    return this.slotRows.rows;
  }
}
