import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { LockService } from '../lock';
import { NamespaceRepository } from './repositories/namespace.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { VectorSettings } from './vector-settings';
import { VectorTables } from './vector-tables';

export const CREATE_INDEXES_LOCK = 'lock:vector:create_indexes';

/**
 * Start-up (and post-rebuild) pass, under `lock:vector:create_indexes` so replicas starting
 * together take turns: item table parents exist, every active slot has a table per registered
 * table, and every such table a valid HNSW index and metadata GIN index (slots made before
 * filtered search get the latter here, built CONCURRENTLY). Idempotent. If it cannot run (Redis
 * or Postgres down at start-up) it retries in the background.
 */
@Injectable()
export class IndexMaintenance implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('IndexMaintenance');
  private retryTimer?: NodeJS.Timeout;

  constructor(
    private readonly locks: LockService,
    private readonly schema: VectorSchemaRepository,
    private readonly namespaces: NamespaceRepository,
    private readonly tables: VectorTables,
    private readonly settings: VectorSettings,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    await this.ensureAll().catch((error: unknown) => this.retryLater(error));
  }

  onApplicationShutdown(): void {
    clearTimeout(this.retryTimer);
  }

  /** Returns the indexes it had to create, as `table:slot`. */
  async ensureAll(): Promise<string[]> {
    return this.locks.withLock(
      CREATE_INDEXES_LOCK,
      async () => {
        await this.schema.ensureParents();
        const settings = await this.settings.indexSettings();
        const created: string[] = [];
        for (const namespace of await this.namespaces.namespaces()) {
          const slot = await this.namespaces.slot(namespace.namespace, namespace.active_slot);
          if (!slot) continue;
          for (const table of this.tables.names) {
            if (!(await this.schema.slotTableExists(table, slot.id))) {
              await this.schema.transaction((client) =>
                this.schema.createSlotTables(client, slot.id, slot.dimension, true),
              );
            }
            if (
              (await this.schema.ensureIndex(table, slot.id, slot.dimension, settings)) ===
              'created'
            ) {
              created.push(`${table}:${namespace.namespace}:${slot.slot}`);
            }
          }
        }
        if (created.length > 0) this.logger.log(`created indexes: ${created.join(', ')}`);
        return created;
      },
      { ttlMs: 60_000, waitTimeoutMs: 10 * 60_000, operation: 'create-indexes' },
    );
  }

  private retryLater(error: unknown): void {
    this.logger.warn(`index check failed, retrying in 5 s: ${String(error)}`);
    this.retryTimer = setTimeout(() => {
      this.ensureAll().catch((next: unknown) => this.retryLater(next));
    }, 5_000);
    this.retryTimer.unref();
  }
}
