import { randomBytes } from 'node:crypto';
import {
  acknowledgedWriteProblems,
  catalogProblems,
  outcomeOf,
  WriteLedger,
} from '../support/acknowledged-writes';
import { describeAnswer, heldBeforeAnswer } from '../support/namespace-checks';
import { ReplicaSet } from '../support/replica-harness';
import { UpsertLoad } from '../support/upsert-load';

/**
 * R7 — rebuild, rebuild, rollback, cleanup under continuous upserts (replica 1), with a pause
 * injected inside an upsert: the fault proxy in front of replica 0's Postgres holds the
 * statement that follows the upsert's BEGIN, so its transaction has started before a rebuild's
 * switch (completed meanwhile on replica 1) and writes after it. After every step each
 * acknowledged write must be in the active slot — including the pinned ones, whose transaction
 * start time is older than the slot they were written to.
 */
describe('R7 rebuild, rebuild, rollback, cleanup with an upsert paused across the switch', () => {
  let set: ReplicaSet;
  const namespace = `r7-${randomBytes(3).toString('hex')}`;
  const table = 'questions';
  const ledger = new WriteLedger();

  beforeAll(async () => {
    set = await ReplicaSet.start({ replicas: 2 });
    const items = Array.from({ length: 500 }, (_, i) => ({
      obj_ref: `seed-${i}`,
      content: `seed-${i} v1`,
    }));
    const seeded = await set
      .replica(1)
      .post('/batch-upsert', { items, table_name: table, namespace });
    expect(seeded.status).toBe(200);
    ledger.record(namespace, table, items, 'acked');
  }, 60_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  it('R7 keeps every acknowledged write in the active slot after each step', async () => {
    const [pinnedReplica, admin] = [set.replica(0), set.replica(1)];
    const load = new UpsertLoad({
      namespace,
      table,
      ledger,
      replicas: () => [admin],
      writers: 2,
      batchSize: 6,
      pauseMs: 20,
    });
    const problems: string[] = [];
    const check = async (step: string) => {
      for (const problem of [
        ...(await catalogProblems(set.db, namespace)),
        ...(await acknowledgedWriteProblems(set.db, ledger)),
      ]) {
        problems.push(`after ${step}: ${problem}`);
      }
    };
    /** A rebuild switch completed while an upsert's transaction is open but not yet written. */
    const rebuildAcrossPinnedUpsert = async (step: string) => {
      // Whatever the upsert sends first after its BEGIN waits (today: the namespace row FOR SHARE).
      const hold = pinnedReplica.proxy!.hold(/[\s\S]/, { after: /\bBEGIN\b/ });
      const items = [{ obj_ref: `pinned-${step}`, content: `pinned-${step} v1` }];
      const settle = ledger.send(namespace, table, items);
      const pinned = pinnedReplica.post('/batch-upsert', { items, table_name: table, namespace });
      await heldBeforeAnswer(hold, pinned, `the upsert pinned across ${step}`);
      const rebuilt = await admin.post('/rebuild-index', { namespace, force: true });
      hold.release();
      const answer = await pinned;
      settle(outcomeOf(answer));
      if (rebuilt.status !== 200) problems.push(`${step}: ${describeAnswer(rebuilt)}`);
      if (answer.status !== 200) problems.push(`${step} pinned upsert: ${describeAnswer(answer)}`);
    };

    try {
      await load.waitForAcks(3);
      await check('the seed');
      await rebuildAcrossPinnedUpsert('rebuild-1');
      await load.waitForAcks(2);
      await check('rebuild 1');
      await rebuildAcrossPinnedUpsert('rebuild-2');
      await load.waitForAcks(2);
      await check('rebuild 2');

      const rollback = await admin.post('/rollback', { namespace });
      if (rollback.status !== 200) problems.push(`rollback: ${describeAnswer(rollback)}`);
      await load.waitForAcks(2);
      await check('rollback');

      const cleanup = await admin.post('/cleanup-slots', { namespace });
      if (cleanup.status !== 200) problems.push(`cleanup: ${describeAnswer(cleanup)}`);
      await load.waitForAcks(2);
      await check('cleanup');
    } finally {
      pinnedReplica.proxy!.passThrough();
      await load.stop();
    }
    expect(load.unexpected([])).toEqual([]);
    await check('the load stopped');
    expect(problems).toEqual([]);
  }, 60_000);
});
