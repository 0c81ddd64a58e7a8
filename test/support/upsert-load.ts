import { LedgerItem, outcomeOf, WriteLedger } from './acknowledged-writes';
import type { Answer, Replica } from './replica-harness';

export interface LoadAnswer {
  kind: 'upsert' | 'search';
  replica: number;
  status: number;
  ms: number;
  /** Epoch ms when the request was sent. */
  at: number;
  error?: string;
  detail?: string;
}

export interface UpsertLoadOptions {
  namespace: string;
  table: string;
  /** Replicas to send to, in turn; a function so a restarted replica is picked up. */
  replicas: () => Replica[];
  ledger: WriteLedger;
  writers?: number;
  /** Items per request: half new obj_refs, half overwrites of the writer's earlier ones. */
  batchSize?: number;
  pauseMs?: number;
  timeoutMs?: number;
  /** Search requests interleaved with the upserts (one per writer round), if set. */
  search?: boolean;
  /** Prefix of the obj_refs, so two loads in one namespace never share an obj_ref. */
  prefix?: string;
}

/**
 * Upserts (and optionally searches) from a few concurrent clients until stopped. Each writer
 * owns its obj_refs and writes them one request at a time, recording every outcome in the
 * ledger; an obj_ref whose write had an unknown outcome is never written again (a request the
 * client gave up on may still take effect later, which would make "the last write" ambiguous).
 */
export class UpsertLoad {
  readonly answers: LoadAnswer[] = [];
  private running = true;
  private readonly done: Promise<void>;
  private requests = 0;

  constructor(private readonly options: UpsertLoadOptions) {
    const writers = options.writers ?? 3;
    this.done = Promise.all(
      Array.from({ length: writers }, (_, writer) => this.writer(writer)),
    ).then(() => undefined);
  }

  /** Stops sending and waits for requests in flight to end. */
  async stop(): Promise<LoadAnswer[]> {
    this.running = false;
    await this.done;
    return this.answers;
  }

  /** Answers whose status is outside `allowed` (2xx always allowed). */
  unexpected(allowed: number[]): LoadAnswer[] {
    return this.answers.filter(
      (answer) =>
        !(answer.status >= 200 && answer.status < 300) && !allowed.includes(answer.status),
    );
  }

  get acknowledged(): number {
    return this.answers.filter((a) => a.kind === 'upsert' && outcomeOf(a) === 'acked').length;
  }

  /** Resolves once `count` more upserts have been acknowledged, or rejects after the deadline. */
  async waitForAcks(count: number, timeoutMs = 10_000): Promise<void> {
    const target = this.acknowledged + count;
    const deadline = Date.now() + timeoutMs;
    while (this.acknowledged < target) {
      if (Date.now() > deadline) {
        throw new Error(
          `load: fewer than ${count} upserts acknowledged within ${timeoutMs} ms; last answers: ${JSON.stringify(this.answers.slice(-5))}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  private async writer(writer: number): Promise<void> {
    const { namespace, table, ledger } = this.options;
    const batchSize = this.options.batchSize ?? 10;
    const prefix = this.options.prefix ?? 'load';
    const owned: string[] = [];
    const versions = new Map<string, number>();
    let fresh = 0;
    for (let round = 0; this.running; round++) {
      const replicas = this.options.replicas().filter((replica) => replica.alive);
      if (replicas.length === 0) break;
      const replica = replicas[(writer + this.requests++) % replicas.length];
      const overwrite = owned.slice(-Math.floor(batchSize / 2));
      const refs = [...overwrite];
      while (refs.length < batchSize) refs.push(`${prefix}-w${writer}-${fresh++}`);
      const items: (LedgerItem & { metadata: Record<string, unknown> })[] = refs.map((ref) => {
        const version = (versions.get(ref) ?? 0) + 1;
        versions.set(ref, version);
        return {
          obj_ref: ref,
          content: `${ref} v${version}`,
          metadata: { writer, version },
        };
      });
      const at = Date.now();
      const settle = ledger.send(namespace, table, items);
      const answer = await replica.post(
        '/batch-upsert',
        { items, table_name: table, namespace },
        {
          timeoutMs: this.options.timeoutMs ?? 15_000,
        },
      );
      this.note('upsert', replica, answer, at);
      const outcome = outcomeOf(answer);
      settle(outcome);
      // Overwrites continue only on obj_refs whose every write had a known outcome.
      const unknown = new Set(outcome === 'unknown' ? refs : []);
      for (const ref of refs) {
        const index = owned.indexOf(ref);
        if (index >= 0) owned.splice(index, 1);
        if (!unknown.has(ref)) owned.push(ref);
      }
      if (this.options.search) {
        const searchAt = Date.now();
        const searched = await replica.post(
          '/search',
          { table_name: table, namespace, query: `${prefix} ${round}`, k: 3 },
          { timeoutMs: this.options.timeoutMs ?? 15_000 },
        );
        this.note('search', replica, searched, searchAt);
      }
      if (this.options.pauseMs) await new Promise((r) => setTimeout(r, this.options.pauseMs));
    }
  }

  private note(kind: LoadAnswer['kind'], replica: Replica, answer: Answer, at: number): void {
    const body = answer.body as { detail?: string; title?: string };
    this.answers.push({
      kind,
      replica: replica.index,
      status: answer.status,
      ms: Math.round(answer.ms),
      at,
      error: answer.error,
      detail:
        answer.status >= 300 && typeof body === 'object' && body !== null
          ? (body.detail ?? body.title ?? JSON.stringify(body))
          : undefined,
    });
  }
}

/** A short, readable summary of answers: counts per kind and status. */
export function summarize(answers: readonly LoadAnswer[]): string {
  const counts = new Map<string, number>();
  for (const answer of answers) {
    const key = `${answer.kind} ${answer.status}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts.entries()].map(([key, count]) => `${key}: ${count}`).join(', ');
}

export interface MarkedBatch {
  marker: string;
  replica: number;
  size: number;
  status?: number;
}

/**
 * Sends batches of fresh obj_refs, each item tagged with its batch's marker (metadata.batch), one
 * after the other until stopped, so a test can check that every batch is all or nothing.
 */
export class MarkedBatches {
  readonly batches: MarkedBatch[] = [];
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    private readonly options: {
      namespace: string;
      table: string;
      replicas: () => Replica[];
      ledger: WriteLedger;
      size: number;
      prefix: string;
      timeoutMs?: number;
    },
  ) {
    this.loop = this.run();
  }

  async stop(): Promise<MarkedBatch[]> {
    this.running = false;
    await this.loop;
    return this.batches;
  }

  private async run(): Promise<void> {
    const { namespace, table, ledger, size, prefix } = this.options;
    while (this.running) {
      const replicas = this.options.replicas().filter((replica) => replica.alive);
      if (replicas.length === 0) return;
      const replica = replicas[this.batches.length % replicas.length];
      const marker = `${prefix}${this.batches.length}`;
      const batch: MarkedBatch = { marker, replica: replica.index, size };
      this.batches.push(batch);
      const items = Array.from({ length: size }, (_, i) => ({
        obj_ref: `${marker}-${i}`,
        content: `${marker}-${i} v1`,
        metadata: { batch: marker },
      }));
      const settle = ledger.send(namespace, table, items);
      const answer = await replica.post(
        '/batch-upsert',
        { items, table_name: table, namespace },
        { timeoutMs: this.options.timeoutMs ?? 15_000 },
      );
      batch.status = answer.status;
      settle(outcomeOf(answer));
    }
  }
}

/**
 * For `expect(report).toEqual({ invariant, bad: [] })`: nothing when every answer was fine,
 * else a count with all answers' statuses, then the first offending answers, one line each.
 */
export function answerReport(
  invariant: string,
  bad: readonly LoadAnswer[],
  all: readonly LoadAnswer[],
): { invariant: string; bad: string[] } {
  if (bad.length === 0) return { invariant, bad: [] };
  return {
    invariant,
    bad: [
      `${bad.length} of ${all.length} answers broke it; all answers: ${summarize(all)}`,
      ...bad
        .slice(0, 8)
        .map(
          (a) =>
            `${a.kind} via replica ${a.replica}: ${a.status || 'no answer'} after ${a.ms} ms${a.detail ? ` (${a.detail})` : ''}${a.error ? ` (${a.error})` : ''}`,
        ),
    ],
  };
}
