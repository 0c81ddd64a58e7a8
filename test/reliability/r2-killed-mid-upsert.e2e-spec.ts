import { randomBytes } from 'node:crypto';
import {
  acknowledgedWriteProblems,
  outcomeOf,
  rowsPerBatchMarker,
  WriteLedger,
} from '../support/acknowledged-writes';
import { seedNamespace } from '../support/namespace-checks';
import { Answer, ReplicaSet } from '../support/replica-harness';
import { answerReport, UpsertLoad } from '../support/upsert-load';

const BIG = 1_000;

/**
 * R2 — SIGKILL of a replica in the middle of large batch upserts. The fault proxy in front of
 * the victim's Postgres pins the moment: once with the batch's rows inserted but its COMMIT not
 * yet sent, once while the INSERT statement itself is still arriving. Other replicas keep
 * upserting into the same table and namespace throughout. Each batch must be all or nothing
 * (counted by its marker), and every acknowledged write must be in the active slot.
 */
describe('R2 a replica killed mid-upsert', () => {
  let set: ReplicaSet;
  const namespace = `r2-${randomBytes(3).toString('hex')}`;
  const table = 'questions';

  beforeAll(async () => {
    // A short lease, so the dead holder's lock lapses quickly for the survivors.
    set = await ReplicaSet.start({ replicas: 3, env: { DEFAULT_LOCK_TTL_MS: '2000' } });
    await seedNamespace(set.replica(1), namespace, table);
  }, 60_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  it('R2a leaves every batch all or nothing and loses no acknowledged write', async () => {
    const ledger = new WriteLedger();
    const load = new UpsertLoad({
      namespace,
      table,
      ledger,
      replicas: () => set.replicas.slice(1),
      writers: 3,
      batchSize: 20,
      pauseMs: 10,
    });
    const bigBatches: { marker: string; replica: number; answer?: Answer }[] = [];
    const sendBig = async (replica: number) => {
      const marker = `big${bigBatches.length}`;
      const batch: (typeof bigBatches)[number] = { marker, replica };
      bigBatches.push(batch);
      const items = Array.from({ length: BIG }, (_, i) => ({
        obj_ref: `${marker}-${i}`,
        content: `${marker}-${i} v1`,
        metadata: { batch: marker },
      }));
      const settle = ledger.send(namespace, table, items);
      batch.answer = await set.replica(replica).post('/batch-upsert', {
        items,
        table_name: table,
        namespace,
      });
      settle(outcomeOf(batch.answer));
    };

    try {
      // 1. Killed with the batch's rows inserted, its COMMIT held.
      await load.waitForAcks(3);
      let victim = set.replica(0);
      const beforeCommit = victim.proxy!.hold(/COMMIT/, { after: /INSERT INTO "vec_questions_s/ });
      const inFlight = [sendBig(0), sendBig(0), sendBig(1), sendBig(2)];
      // The victim holds the upsert lock: the others queue behind it until its lease lapses.
      await beforeCommit.matched(15_000);
      await victim.kill();
      await Promise.all(inFlight);

      // 2. Killed while its INSERT statement is arriving (the proxy lets it go, then the kill).
      victim = await set.restart(0);
      const insert = victim.proxy!.hold(/INSERT INTO "vec_questions_s/);
      const secondWave = [sendBig(0), sendBig(1), sendBig(2), sendBig(0)];
      await insert.matched(15_000);
      insert.release();
      await victim.kill();
      await Promise.all(secondWave);
      await load.waitForAcks(5);
    } finally {
      await load.stop();
    }

    // The batches sent to survivors were acknowledged; those on the victim got no answer.
    for (const batch of bigBatches) {
      if (batch.replica !== 0)
        expect({ marker: batch.marker, status: batch.answer?.status }).toEqual({
          marker: batch.marker,
          status: 200,
        });
    }
    const rowsOf = await rowsPerBatchMarker(set.db, namespace, table);
    // Invariant: a batch is one transaction — all of its rows or none.
    const partial = bigBatches
      .map((batch) => ({ marker: batch.marker, rows: rowsOf.get(batch.marker) ?? 0 }))
      .filter(({ rows }) => rows !== 0 && rows !== BIG);
    expect(partial).toEqual([]);
    for (const batch of bigBatches) {
      if (batch.answer && outcomeOf(batch.answer) === 'acked') {
        expect({ marker: batch.marker, rows: rowsOf.get(batch.marker) }).toEqual({
          marker: batch.marker,
          rows: BIG,
        });
      }
    }
    // The survivors answered every upsert (the dead holder's lease lapsed; nothing failed).
    const invariant = 'the survivors answer every upsert while a holder dies';
    expect(answerReport(invariant, load.unexpected([]), load.answers)).toEqual({
      invariant,
      bad: [],
    });
    expect(await acknowledgedWriteProblems(set.db, ledger)).toEqual([]);
  }, 90_000);

  it('R2b a Postgres connection cut after the INSERT or after the COMMIT: 503, the batch whole, the replica alive', async () => {
    const replica = set.replica(1);
    const ledger = new WriteLedger();
    const problems: string[] = [];
    const send = async (marker: string) => {
      const items = Array.from({ length: BIG }, (_, i) => ({
        obj_ref: `${marker}-${i}`,
        content: `${marker}-${i} v1`,
        metadata: { batch: marker },
      }));
      const settle = ledger.send(namespace, table, items);
      const answer = await replica.post('/batch-upsert', { items, table_name: table, namespace });
      settle(outcomeOf(answer));
      return answer;
    };
    const cases = [
      // Cut while the INSERT arrives: the transaction cannot have committed.
      { marker: 'cut-insert', cut: () => replica.proxy!.cut(/INSERT INTO "vec_questions_s/) },
      // Cut after the COMMIT went out: committed or not, the client cannot know (a lost reply).
      {
        marker: 'cut-commit',
        cut: () => replica.proxy!.cut(/COMMIT/, { after: /INSERT INTO "vec_questions_s/ }),
      },
    ];
    for (const { marker, cut } of cases) {
      const rule = cut();
      const answer = await send(marker);
      if (rule.count !== 1) problems.push(`${marker}: the cut did not happen (${rule.count})`);
      rule.cancel();
      // A dropped database connection is a dependency failure: 503, never 500.
      if (answer.status !== 503) {
        problems.push(
          `${marker}: a cut database connection must answer 503: ${answer.status} ${JSON.stringify(answer.body)}`,
        );
      }
      if (answer.status === 0) {
        // No answer at all: the process may be going down; let its exit be seen.
        await Promise.race([replica.process.exited, new Promise((r) => setTimeout(r, 500))]);
      }
      if (!replica.alive) break;
    }
    const rows = await rowsPerBatchMarker(set.db, namespace, table);
    for (const { marker } of cases) {
      const count = rows.get(marker) ?? 0;
      if (count !== 0 && count !== BIG)
        problems.push(`${marker}: ${count} of ${BIG} rows (a partial batch)`);
    }
    if (!replica.alive) {
      // Invariant: no process exit from a dependency fault. Nothing below can run without it.
      problems.unshift(
        `replica 1 exited after a cut database connection: ${replica.output(1_500)}`,
      );
      expect(problems).toEqual([]);
    }
    const after = await replica.post('/batch-upsert', {
      items: [{ obj_ref: 'after-cuts', content: 'after-cuts v1' }],
      table_name: table,
      namespace,
    });
    if (after.status !== 200)
      problems.push(`an upsert after the cuts: ${after.status} ${JSON.stringify(after.body)}`);
    expect(problems).toEqual([]);
  }, 30_000);
});
