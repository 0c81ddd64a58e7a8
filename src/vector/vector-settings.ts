import { Inject, Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Pool } from 'pg';
import { Env } from '../config/env.schema';
import { PG_POOL } from '../database/database.constants';
import { supportsParallelHnswBuild } from '../health/indicators';
import { IndexSettings } from './repositories/vector-schema.repository';

/** Vector limits and index settings from the configuration, plus what the server supports. */
@Injectable()
export class VectorSettings {
  readonly maxItems: number;
  readonly contentMaxBytes: number;
  readonly metadataMaxBytes: number;
  readonly efSearch: number;
  readonly maxScanTuples: number;
  readonly lockTtlMs: number;
  readonly lockWaitMs: number;
  private parallelBuild?: Promise<boolean>;

  constructor(
    private readonly config: ConfigService<Env, true>,
    @Inject(PG_POOL) private readonly pool: Pool,
  ) {
    this.maxItems = config.get('UPSERT_MAX_ITEMS', { infer: true });
    this.contentMaxBytes = config.get('CONTENT_MAX_BYTES', { infer: true });
    this.metadataMaxBytes = config.get('METADATA_MAX_BYTES', { infer: true });
    this.efSearch = config.get('SEARCH_EF_SEARCH', { infer: true });
    this.maxScanTuples = config.get('SEARCH_MAX_SCAN_TUPLES', { infer: true });
    this.lockTtlMs = config.get('DEFAULT_LOCK_TTL_MS', { infer: true });
    this.lockWaitMs = config.get('DEFAULT_WAIT_TIMEOUT_MS', { infer: true });
  }

  async indexSettings(): Promise<IndexSettings> {
    this.parallelBuild ??= this.pool
      .query<{ version: string }>(
        `SELECT extversion AS version FROM pg_extension WHERE extname = 'vector'`,
      )
      .then(({ rows }) => supportsParallelHnswBuild(rows[0]?.version ?? '0'));
    return {
      m: this.config.get('HNSW_M', { infer: true }),
      efConstruction: this.config.get('HNSW_EF_CONSTRUCTION', { infer: true }),
      maintenanceWorkMem: this.config.get('REBUILD_MAINTENANCE_WORK_MEM', { infer: true }),
      parallel: await this.parallelBuild,
    };
  }
}
