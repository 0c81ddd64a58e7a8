import { randomBytes } from 'node:crypto';
import {
  acknowledgedWriteProblems,
  activeSlot,
  slotRows,
  WriteLedger,
} from '../support/acknowledged-writes';
import { LockWaitWatcher } from '../support/lock-wait-watcher';
import { seedNamespace } from '../support/namespace-checks';
import { ReplicaSet } from '../support/replica-harness';

/**
 * R1 — mutual exclusion over HTTP. Four replicas; several clients upsert into one table of one
 * namespace at once, so every request contends for the same lock:vector:upsert:{table}:{ns}.
 * Owner clients each write their own obj_refs sequentially (version after version, spread over
 * the replicas); overwriter clients write one shared set of obj_refs concurrently, a whole set
 * per request. Afterwards Postgres must hold, per owned obj_ref, the last acknowledged version,
 * and for the shared set one single request's content on every row — the last one acknowledged
 * or one that overlapped it. Meanwhile pg_stat_activity is sampled: no upsert may ever wait on
 * the fence row or on item rows, which would mean two lock holders were writing at once.
 */
describe('R1 mutual exclusion over HTTP (4 replicas, one table and namespace)', () => {
  let set: ReplicaSet;
  const namespace = `r1-${randomBytes(3).toString('hex')}`;
  const table = 'questions';

  beforeAll(async () => {
    set = await ReplicaSet.start({ replicas: 4, proxied: false });
  }, 60_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  it('R1 keeps the last acknowledged write of every obj_ref and never interleaves two batches', async () => {
    const ledger = new WriteLedger();
    await seedNamespace(set.replica(0), namespace, table);

    const watcher = new LockWaitWatcher(set.db, set.databaseName, 'lock_fences|INSERT INTO "vec_');
    const failures: string[] = [];
    const owners = Array.from({ length: 6 }, async (_, writer) => {
      const refs = Array.from({ length: 8 }, (_, j) => `own-w${writer}-${j}`);
      for (let version = 1; version <= 12; version++) {
        const items = refs.map((ref) => ({
          obj_ref: ref,
          content: `${ref} v${version}`,
          metadata: { writer, version },
        }));
        const replica = set.replica((writer + version) % set.replicas.length);
        const answer = await replica.post('/batch-upsert', { items, table_name: table, namespace });
        ledger.record(namespace, table, items, answer.status === 200 ? 'acked' : 'unknown');
        if (answer.status !== 200) {
          failures.push(
            `owner ${writer} v${version} on replica ${replica.index}: ${answer.status} ${JSON.stringify(answer.body)}`,
          );
        }
      }
    });

    const shared = Array.from({ length: 10 }, (_, j) => `shared-${j}`);
    const batches: { tag: string; sent: number; acked?: number }[] = [];
    const overwriters = Array.from({ length: 3 }, async (_, client) => {
      for (let n = 0; n < 8; n++) {
        const tag = `c${client}-b${n}`;
        const batch: { tag: string; sent: number; acked?: number } = {
          tag,
          sent: performance.now(),
        };
        batches.push(batch);
        const replica = set.replica((client * 3 + n) % set.replicas.length);
        // Reversed order on odd requests: a writer that took its row locks item by item without
        // the lock (or out of order) would interleave with another or deadlock.
        const refs = n % 2 === 0 ? shared : [...shared].reverse();
        const answer = await replica.post('/batch-upsert', {
          items: refs.map((ref) => ({ obj_ref: ref, content: `${ref} ${tag}` })),
          table_name: table,
          namespace,
        });
        if (answer.status === 200) batch.acked = performance.now();
        else
          failures.push(
            `overwriter ${client} ${tag}: ${answer.status} ${JSON.stringify(answer.body)}`,
          );
      }
    });

    await Promise.all([...owners, ...overwriters]);
    const waits = await watcher.stop();
    expect(failures).toEqual([]);
    expect(watcher.samples).toBeGreaterThan(20);
    // Invariant: one holder of lock:vector:upsert:{table}:{ns} writes at a time.
    expect(waits).toEqual([]);

    expect(await acknowledgedWriteProblems(set.db, ledger)).toEqual([]);

    const slot = await activeSlot(set.db, namespace);
    const rows = await slotRows(set.db, table, slot.id, shared);
    const tags = new Set(shared.map((ref) => rows.get(ref)?.content.slice(ref.length + 1)));
    // One request's content on every row of the set: batches are atomic and never interleave.
    expect([...tags]).toHaveLength(1);
    const [finalTag] = [...tags];
    // The last acknowledged batch, or one that was still in flight when it started: a batch
    // acknowledged before another acknowledged batch was even sent cannot be the final one.
    const acked = batches.filter((batch) => batch.acked !== undefined);
    const superseded = new Set(
      acked
        .filter((batch) => acked.some((later) => later.sent > batch.acked!))
        .map((batch) => batch.tag),
    );
    expect(acked.map((batch) => batch.tag)).toContain(finalTag);
    expect(superseded.has(finalTag!)).toBe(false);
  }, 60_000);
});
