import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { escapeIdentifier } from 'pg';
import { invalidRequest } from '../common/validation';
import { Env } from '../config/env.schema';

/** Namespace names: safe in keys, URLs and logs. */
export const NAMESPACE_PATTERN = /^[a-z0-9][a-z0-9_-]{0,63}$/;

/**
 * The registered item tables (VECTOR_TABLES) and the SQL identifiers derived from them. Table
 * names from requests are only ever looked up here; identifiers come from the validated
 * configuration and numeric slot ids, and are quoted all the same.
 */
@Injectable()
export class VectorTables {
  readonly names: readonly string[];

  constructor(config: ConfigService<Env, true>) {
    this.names = config.get('VECTOR_TABLES', { infer: true });
  }

  has(table: string): boolean {
    return this.names.includes(table);
  }

  /** A table name from a request: a 400 problem naming `field` unless it is registered. */
  assertRegistered(table: string, field = 'table_name'): void {
    if (!this.has(table)) {
      throw invalidRequest([
        { field, message: `unknown table; registered tables: ${this.names.join(', ')}` },
      ]);
    }
  }

  /** The partitioned parent of a table's items. */
  parent(table: string): string {
    return escapeIdentifier(`vec_${this.checked(table)}`);
  }

  /** One slot's partition (slot id = vector_slots.id, unique across namespaces). */
  partition(table: string, slotId: number): string {
    return escapeIdentifier(this.partitionName(table, slotId));
  }

  partitionName(table: string, slotId: number): string {
    return `vec_${this.checked(table)}_s${checkedId(slotId)}`;
  }

  index(table: string, slotId: number): string {
    return escapeIdentifier(`${this.partitionName(table, slotId)}_hnsw`);
  }

  /** The slot's GIN index on `metadata jsonb_path_ops`, which serves filters' containment tests. */
  metadataIndex(table: string, slotId: number): string {
    return escapeIdentifier(this.metadataIndexName(table, slotId));
  }

  metadataIndexName(table: string, slotId: number): string {
    return `${this.partitionName(table, slotId)}_meta`;
  }

  /**
   * A building slot's side table: what upserts write for the slot while its index is built
   * (logged: it holds acknowledged writes until the switch merges it).
   */
  delta(table: string, slotId: number): string {
    return escapeIdentifier(`${this.partitionName(table, slotId)}_delta`);
  }

  /** An unlogged table a rebuild bulk-loads before merging into the new slot. */
  staging(table: string, slotId: number): string {
    return escapeIdentifier(`${this.partitionName(table, slotId)}_load`);
  }

  /**
   * The unlogged table a streamed import loads before merging (see ImportService): named after
   * the import's lock key, so the rows left by an import whose process died can be found and
   * dropped.
   */
  importStaging(table: string, importKey: number): string {
    return escapeIdentifier(this.importStagingName(table, importKey));
  }

  importStagingName(table: string, importKey: number): string {
    return `vec_${this.checked(table)}_import${checkedId(importKey)}`;
  }

  private checked(table: string): string {
    if (!this.has(table)) throw new Error(`unregistered vector table ${table}`);
    return table;
  }
}

function checkedId(slotId: number): number {
  if (!Number.isSafeInteger(slotId) || slotId <= 0) throw new Error(`bad slot id ${slotId}`);
  return slotId;
}
