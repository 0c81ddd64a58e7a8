import { Pool } from 'pg';
import type { Answer } from './replica-harness';

/**
 * What a client learnt about one write: acknowledged (2xx), refused (a 4xx problem: by contract
 * nothing was written), or unknown (no answer, or a 5xx: the request may or may not have taken
 * effect, at any time).
 */
export type WriteOutcome = 'acked' | 'refused' | 'unknown';

export function outcomeOf(answer: Pick<Answer, 'status'>): WriteOutcome {
  if (answer.status >= 200 && answer.status < 300) return 'acked';
  if (answer.status >= 400 && answer.status < 500) return 'refused';
  return 'unknown';
}

interface Attempt {
  content: string;
  outcome: WriteOutcome;
}

export interface LedgerItem {
  obj_ref: string;
  content: string;
}

/**
 * Every upsert the tests sent, per (namespace, table, obj_ref), in sending order. Each obj_ref
 * has one writer that writes it sequentially, so "the last acknowledged content" is well
 * defined; the row must hold it — or the content of an attempt whose outcome is unknown.
 */
export class WriteLedger {
  private readonly attempts = new Map<string, Attempt[]>();

  record(
    namespace: string,
    table: string,
    items: readonly LedgerItem[],
    outcome: WriteOutcome,
  ): void {
    this.send(namespace, table, items)(outcome);
  }

  /**
   * Records a write as it is sent — in flight, its outcome unknown (it may commit before its
   * answer arrives, so a check made meanwhile must allow its content) — and returns the
   * function that settles it once the answer is known.
   */
  send(
    namespace: string,
    table: string,
    items: readonly LedgerItem[],
  ): (outcome: WriteOutcome) => void {
    const sent: Attempt[] = [];
    for (const item of items) {
      const key = ledgerKey(namespace, table, item.obj_ref);
      let list = this.attempts.get(key);
      if (!list) this.attempts.set(key, (list = []));
      const attempt: Attempt = { content: item.content, outcome: 'unknown' };
      list.push(attempt);
      sent.push(attempt);
    }
    return (outcome) => {
      for (const attempt of sent) attempt.outcome = outcome;
    };
  }

  /** Keys of one namespace and table, with what the stored row may hold. */
  expectations(namespace: string, table: string): Map<string, Expectation> {
    const result = new Map<string, Expectation>();
    for (const [key, list] of this.attempts) {
      const [ns, tbl, objRef] = key.split('\u0000');
      if (ns !== namespace || tbl !== table) continue;
      let lastAcked: string | undefined;
      for (const attempt of list) if (attempt.outcome === 'acked') lastAcked = attempt.content;
      const possible = new Set(
        list.filter((attempt) => attempt.outcome === 'unknown').map((a) => a.content),
      );
      if (lastAcked !== undefined) possible.add(lastAcked);
      result.set(objRef, { lastAcked, possible });
    }
    return result;
  }

  /** Per obj_ref, the index of its last acknowledged attempt so far. */
  lastAckedIndexes(namespace: string, table: string): Map<string, number> {
    const result = new Map<string, number>();
    for (const [key, list] of this.attempts) {
      const [ns, tbl, objRef] = key.split('\u0000');
      if (ns !== namespace || tbl !== table) continue;
      list.forEach((attempt, i) => {
        if (attempt.outcome === 'acked') result.set(objRef, i);
      });
    }
    return result;
  }

  /** Contents of the obj_ref's attempts from `index` on, except refused ones (never written). */
  contentsFrom(namespace: string, table: string, objRef: string, index: number): Set<string> {
    const list = this.attempts.get(ledgerKey(namespace, table, objRef)) ?? [];
    return new Set(
      list
        .slice(index)
        .filter((attempt) => attempt.outcome !== 'refused')
        .map((attempt) => attempt.content),
    );
  }

  /** Namespace/table pairs written to. */
  targets(): { namespace: string; table: string }[] {
    const seen = new Map<string, { namespace: string; table: string }>();
    for (const key of this.attempts.keys()) {
      const [namespace, table] = key.split('\u0000');
      seen.set(`${namespace}\u0000${table}`, { namespace, table });
    }
    return [...seen.values()];
  }

  get acknowledgedCount(): number {
    let count = 0;
    for (const list of this.attempts.values()) {
      if (list.some((attempt) => attempt.outcome === 'acked')) count++;
    }
    return count;
  }
}

export interface Expectation {
  lastAcked?: string;
  /** The last acknowledged content and every unknown-outcome content. */
  possible: Set<string>;
}

function ledgerKey(namespace: string, table: string, objRef: string): string {
  return `${namespace}\u0000${table}\u0000${objRef}`;
}

export interface ActiveSlot {
  namespace: string;
  slot: number;
  /** vector_slots.id, which names the slot's partitions (vec_<table>_s<id>). */
  id: number;
}

/** The namespace's active slot and its catalog row; throws naming the invariant if missing. */
export async function activeSlot(db: Pool, namespace: string): Promise<ActiveSlot> {
  const { rows } = await db.query<{ active_slot: number; id: string | null }>(
    `SELECT n.active_slot, s.id
     FROM vector_namespaces n
     LEFT JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.active_slot
     WHERE n.namespace = $1`,
    [namespace],
  );
  if (rows.length === 0) throw new Error(`namespace ${namespace} does not exist`);
  if (rows[0].id === null) {
    throw new Error(
      `invariant "active_slot points at an existing slot" broken: ${namespace}.active_slot = ${rows[0].active_slot} has no vector_slots row`,
    );
  }
  return { namespace, slot: rows[0].active_slot, id: Number(rows[0].id) };
}

/** Rows of one table in a slot's partition, by obj_ref (content and metadata). */
export async function slotRows(
  db: Pool,
  table: string,
  slotId: number,
  objRefs?: readonly string[],
): Promise<Map<string, { content: string; metadata: Record<string, unknown> | null }>> {
  const partition = `vec_${table}_s${slotId}`;
  const exists = await db.query<{ exists: boolean }>(
    'SELECT to_regclass($1) IS NOT NULL AS exists',
    [partition],
  );
  if (!exists.rows[0].exists) throw new Error(`slot table ${partition} does not exist`);
  const { rows } = await db.query<{
    obj_ref: string;
    content: string;
    metadata: Record<string, unknown> | null;
  }>(
    `SELECT obj_ref, content, metadata FROM "${partition}"
     WHERE $1::text[] IS NULL OR obj_ref = ANY($1::text[])`,
    [objRefs ?? null],
  );
  return new Map(rows.map((row) => [row.obj_ref, row]));
}

/**
 * "Acknowledged means durable and visible": every acknowledged upsert in the ledger is in the
 * namespace's active slot with its last content (or with the content of a later write whose
 * outcome the client never learnt). Returns one line per broken item (at most `limit`), so a
 * failing test names the items.
 */
export async function acknowledgedWriteProblems(
  db: Pool,
  ledger: WriteLedger,
  limit = 10,
): Promise<string[]> {
  const problems: string[] = [];
  for (const { namespace, table } of ledger.targets()) {
    const slot = await activeSlot(db, namespace);
    const expectations = ledger.expectations(namespace, table);
    const marks = ledger.lastAckedIndexes(namespace, table);
    const rows = await slotRows(db, table, slot.id, [...expectations.keys()]);
    let broken = 0;
    let checked = 0;
    for (const [objRef, expected] of expectations) {
      if (expected.lastAcked === undefined) continue;
      checked++;
      const row = rows.get(objRef);
      if (row && expected.possible.has(row.content)) continue;
      // The load may go on while this reads: a write sent after the expectations were taken
      // may have committed before the rows were read. Any attempt from the last acknowledged
      // one on, unless refused, may be what the row holds.
      const later = ledger.contentsFrom(namespace, table, objRef, marks.get(objRef) ?? 0);
      if (row && later.has(row.content)) continue;
      broken++;
      if (problems.length < limit) {
        problems.push(
          `${namespace}/${table}/${objRef}: acknowledged "${expected.lastAcked}", active slot ${slot.slot} holds ${row ? `"${row.content}"` : 'nothing'}`,
        );
      }
    }
    if (broken > 0) {
      problems.push(
        `invariant "every acknowledged upsert is in the active slot with its last content" broken for ${broken} of ${checked} acknowledged items in ${namespace}/${table} (active slot ${slot.slot})`,
      );
    }
  }
  return problems;
}

/** Catalog consistency of one namespace; one line per broken rule. */
export async function catalogProblems(db: Pool, namespace: string): Promise<string[]> {
  const problems: string[] = [];
  const { rows } = await db.query<{
    active_slot: number;
    building_slot: number | null;
    previous_slot: number | null;
  }>(
    'SELECT active_slot, building_slot, previous_slot FROM vector_namespaces WHERE namespace = $1',
    [namespace],
  );
  if (rows.length === 0) return [`namespace ${namespace} does not exist`];
  const slots = await db.query<{ slot: number; status: string }>(
    'SELECT slot, status FROM vector_slots WHERE namespace = $1',
    [namespace],
  );
  const bySlot = new Map(slots.rows.map((row) => [row.slot, row.status]));
  const { active_slot, building_slot, previous_slot } = rows[0];
  if (bySlot.get(active_slot) !== 'active') {
    problems.push(
      `invariant "active_slot points at an existing active slot" broken: active_slot ${active_slot} is ${bySlot.get(active_slot) ?? 'missing from vector_slots'}`,
    );
  }
  if (building_slot !== null && bySlot.get(building_slot) !== 'building') {
    problems.push(
      `building_slot ${building_slot} is ${bySlot.get(building_slot) ?? 'missing from vector_slots'}`,
    );
  }
  if (previous_slot !== null && !bySlot.has(previous_slot)) {
    problems.push(`previous_slot ${previous_slot} is missing from vector_slots`);
  }
  return problems;
}

/**
 * Samples the catalog every few milliseconds while a scenario runs and remembers any moment at
 * which the namespace's active_slot had no vector_slots row.
 */
export class CatalogWatcher {
  readonly violations: string[] = [];
  samples = 0;
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    private readonly db: Pool,
    private readonly namespace: string,
    intervalMs = 25,
  ) {
    this.loop = (async () => {
      while (this.running) {
        try {
          const { rows } = await this.db.query<{ active_slot: number; found: boolean }>(
            `SELECT n.active_slot, EXISTS (
               SELECT 1 FROM vector_slots s WHERE s.namespace = n.namespace AND s.slot = n.active_slot
             ) AS found
             FROM vector_namespaces n WHERE n.namespace = $1`,
            [this.namespace],
          );
          this.samples++;
          if (rows[0] && !rows[0].found && this.violations.length < 5) {
            this.violations.push(
              `active_slot ${rows[0].active_slot} of ${this.namespace} had no vector_slots row`,
            );
          }
        } catch {
          // A sample lost to a terminated connection is skipped.
        }
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
      }
    })();
  }

  async stop(): Promise<string[]> {
    this.running = false;
    await this.loop;
    return this.violations;
  }
}

/** Rows of the active slot per `metadata.batch` marker, for all-or-nothing checks. */
export async function rowsPerBatchMarker(
  db: Pool,
  namespace: string,
  table: string,
): Promise<Map<string, number>> {
  const slot = await activeSlot(db, namespace);
  const { rows } = await db.query<{ batch: string; rows: number }>(
    `SELECT metadata->>'batch' AS batch, count(*)::int AS rows FROM "vec_${table}_s${slot.id}"
     WHERE metadata ? 'batch' GROUP BY 1`,
  );
  return new Map(rows.map((row) => [row.batch, row.rows]));
}
