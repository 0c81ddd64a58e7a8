import { Pool } from 'pg';
import { activeSlot, WriteLedger } from './acknowledged-writes';
import type { Answer, Replica } from './replica-harness';

/** Creates `namespace` with one item through `replica` (its first upsert makes slot 1). */
export async function seedNamespace(replica: Replica, namespace: string, table: string) {
  const seeded = await replica.post('/batch-upsert', {
    items: [{ obj_ref: 'seed', content: 'seed' }],
    table_name: table,
    namespace,
  });
  expect(seeded.status).toBe(200);
}

/**
 * Whether a namespace is still usable through `replica`: a search answers 200 and an upsert
 * answers 200 (recorded in the ledger). One line per failed check.
 */
/**
 * A statement only a rebuild's loading phase sends: the server-side copy of one page of rows
 * (VectorItemRepository.copyReusable). Tests hold it in the fault proxy to pause a rebuild
 * mid-load.
 */
export const LOADING_STATEMENT = /WITH page AS/;

/**
 * The index build of a rebuild's new slot (on a replica whose namespaces already exist, the
 * first CREATE INDEX it sends is that one).
 */
export const INDEXING_STATEMENT = /CREATE INDEX/;

export async function usabilityProblems(
  replica: Replica,
  namespace: string,
  table: string,
  ledger: WriteLedger,
  label: string,
): Promise<string[]> {
  const problems: string[] = [];
  const search = await replica.post('/search', {
    table_name: table,
    namespace,
    query: 'usable',
    k: 3,
  });
  if (search.status !== 200) problems.push(`search ${label}: ${describeAnswer(search)}`);
  const items = [{ obj_ref: `usable-${label}`, content: `usable-${label} v1` }];
  const upsert = await replica.post('/batch-upsert', { items, table_name: table, namespace });
  ledger.record(namespace, table, items, upsert.status === 200 ? 'acked' : 'refused');
  if (upsert.status !== 200) problems.push(`upsert ${label}: ${describeAnswer(upsert)}`);
  return problems;
}

export async function activeSlotNumber(db: Pool, namespace: string): Promise<number> {
  return (await activeSlot(db, namespace)).slot;
}

export function describeAnswer(answer: Answer): string {
  return answer.status === 0
    ? `no answer (${answer.error ?? 'unknown'})`
    : `${answer.status} ${JSON.stringify(answer.body).slice(0, 300)}`;
}

/**
 * Resolves when the hold has caught a statement; rejects with the request's answer if that
 * came first (the request never reached the held statement).
 */
export async function heldBeforeAnswer(
  hold: { matched(timeoutMs?: number): Promise<void> },
  request: Promise<Answer>,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const answered = request.then((answer) => {
    throw new Error(
      `${what}: answered before reaching the held statement: ${describeAnswer(answer)}`,
    );
  });
  await Promise.race([hold.matched(timeoutMs), answered]);
  answered.catch(() => undefined);
}
