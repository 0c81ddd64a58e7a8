import { randomBytes } from 'node:crypto';
import {
  acknowledgedWriteProblems,
  catalogProblems,
  CatalogWatcher,
  WriteLedger,
} from '../support/acknowledged-writes';
import {
  activeSlotNumber,
  describeAnswer,
  heldBeforeAnswer,
  INDEXING_STATEMENT,
  LOADING_STATEMENT,
  usabilityProblems,
} from '../support/namespace-checks';
import { Answer, ReplicaSet } from '../support/replica-harness';
import { UpsertLoad } from '../support/upsert-load';
import { waitFor } from '../support/wait';

const SEED_ROWS = 2_000;

/**
 * R6 — rebuilds under stress, three replicas, upserts running throughout (on replicas 1 and 2).
 *
 * a. A storm of 200 identical POST /rebuild-index spread over the replicas runs one rebuild:
 *    the slot advances by exactly one and every successful answer is the same.
 * b. The rebuild's leader (replica 0) is stopped (SIGSTOP) mid-load past its lock lease and its
 *    idempotency lease (DEFAULT_LOCK_TTL_MS=2000, DEFAULT_IN_PROGRESS_TTL=2); a forced rebuild
 *    then runs on replica 1 and, while it is still building, the stopped leader resumes.
 * c. A running rebuild's lock is force-released (DELETE /lock/lock:vector:rebuild:{ns}) mid-load
 *    and a manual rebuild starts on another replica; while it is still building, the evicted
 *    rebuild goes on.
 * After b and c: the evicted rebuild is refused (a 4xx problem, not a 500 or a success), the
 * other one succeeds, the namespace stays usable and complete, active_slot points at an
 * existing slot at every sampled moment, and slot numbers are never handed out twice.
 */
describe('R6 rebuild storm, a leader paused past its lease, a force-released rebuild lock', () => {
  let set: ReplicaSet;
  const table = 'questions';
  // Each scenario has its own namespace (seeded, under its own upsert load and catalog
  // watcher), so a namespace one scenario breaks does not fail the next.
  let namespace: string;
  let ledger: WriteLedger;
  let load: UpsertLoad | undefined;
  let watcher: CatalogWatcher | undefined;

  beforeAll(async () => {
    set = await ReplicaSet.start({
      replicas: 3,
      env: { DEFAULT_LOCK_TTL_MS: '2000', DEFAULT_IN_PROGRESS_TTL: '2' },
    });
  }, 60_000);

  beforeEach(async () => {
    namespace = `r6-${randomBytes(3).toString('hex')}`;
    ledger = new WriteLedger();
    for (let start = 0; start < SEED_ROWS; start += 1_000) {
      const items = Array.from({ length: 1_000 }, (_, i) => ({
        obj_ref: `seed-${start + i}`,
        content: `seed-${start + i} v1`,
      }));
      const seeded = await set
        .replica(0)
        .post('/batch-upsert', { items, table_name: table, namespace });
      expect(seeded.status).toBe(200);
      ledger.record(namespace, table, items, 'acked');
    }
    watcher = new CatalogWatcher(set.db, namespace);
    load = new UpsertLoad({
      namespace,
      table,
      ledger,
      replicas: () => set.replicas.slice(1),
      writers: 2,
      batchSize: 6,
      pauseMs: 20,
    });
    await load.waitForAcks(3);
  }, 30_000);

  afterEach(async () => {
    for (const replica of set?.replicas ?? []) {
      replica.resume();
      replica.proxy?.passThrough();
    }
    await load?.stop();
    await watcher?.stop();
  }, 30_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  it('R6a 200 identical rebuild requests over 3 replicas run one rebuild', async () => {
    const before = await activeSlotNumber(set.db, namespace);
    const rebuildsBefore = (
      await set.db.query('SELECT 1 FROM vector_rebuilds WHERE namespace = $1', [namespace])
    ).rowCount;
    const answers = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        set.replica(i % 3).post('/rebuild-index', { namespace, force: false }),
      ),
    );
    const statuses = [...new Set(answers.map((answer) => answer.status))].sort();
    const succeeded = answers.filter((answer) => answer.status === 200);
    // 409 only for callers whose wait for the running rebuild ran out.
    expect(statuses.filter((status) => status !== 200 && status !== 409)).toEqual([]);
    expect(succeeded.length).toBeGreaterThan(0);
    expect(new Set(succeeded.map((answer) => JSON.stringify(answer.body))).size).toBe(1);
    expect(succeeded[0].body).toMatchObject({
      success: true,
      slot: before + 1,
      previous_slot: before,
    });
    // One execution: one new rebuild record and one new slot.
    const rebuildsAfter = (
      await set.db.query('SELECT 1 FROM vector_rebuilds WHERE namespace = $1', [namespace])
    ).rowCount;
    expect(rebuildsAfter! - rebuildsBefore!).toBe(1);
    expect(await activeSlotNumber(set.db, namespace)).toBe(before + 1);
    expect(await acknowledgedWriteProblems(set.db, ledger)).toEqual([]);
  }, 60_000);

  /**
   * What must hold after an evicted rebuild and its successor both finished: every broken
   * invariant is listed, so one run reports them all.
   */
  const problemsAfter = async (
    label: string,
    evicted: Answer,
    evictedSlot: number,
    successor: Answer,
  ): Promise<string[]> => {
    const problems: string[] = [];
    // The evicted rebuild lost its lease: it is refused with a problem (4xx), or — one key, one
    // answer — given the successor's stored outcome; never its own result, never a 500.
    const sharesOutcome =
      evicted.status === 200 && JSON.stringify(evicted.body) === JSON.stringify(successor.body);
    if (!(evicted.status >= 400 && evicted.status < 500) && !sharesOutcome) {
      problems.push(
        `the evicted rebuild must be refused (4xx) or answer the successor's outcome: ${describeAnswer(evicted)}`,
      );
    }
    if (successor.status !== 200) {
      problems.push(`the successor rebuild must succeed: ${describeAnswer(successor)}`);
    }
    // Invariant: active_slot points at an existing slot row (now, and at every sample so far).
    problems.push(...(await catalogProblems(set.db, namespace)));
    problems.push(...watcher!.violations.map((v) => `sampled: ${v}`));
    const successorSlot = (successor.body as { slot?: number }).slot;
    if (successor.status === 200) {
      const active = await set.db.query<{ active_slot: number }>(
        'SELECT active_slot FROM vector_namespaces WHERE namespace = $1',
        [namespace],
      );
      if (active.rows[0].active_slot !== successorSlot) {
        problems.push(
          `active_slot is ${active.rows[0].active_slot}, the successor switched to ${successorSlot}`,
        );
      }
      // Identities are never reused: the successor's slot is newer than the evicted one's.
      if (!(successorSlot! > evictedSlot)) {
        problems.push(
          `slot numbers must only grow: the successor built slot ${successorSlot}, the evicted rebuild had slot ${evictedSlot}`,
        );
      }
    }
    // Every acknowledged upsert is in the active slot (upserts ran throughout), and the
    // namespace answers searches and upserts on every replica.
    try {
      problems.push(...(await acknowledgedWriteProblems(set.db, ledger)));
    } catch (error) {
      problems.push(String(error));
    }
    for (const replica of set.replicas) {
      problems.push(
        ...(await usabilityProblems(
          replica,
          namespace,
          table,
          ledger,
          `${label}-r${replica.index}`,
        )),
      );
    }
    return problems;
  };

  /**
   * The evicted rebuild's answer once it has gone on. It normally fails while the successor is
   * still held (which is the moment that tests its clean-up); a service that makes it wait for
   * the successor's outcome instead gets the successor released after a while.
   */
  const evictedAnswer = async (request: Promise<Answer>, successorHold: { release(): void }) => {
    const early = await Promise.race([
      request,
      new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 3_000)),
    ]);
    successorHold.release();
    return early ?? request;
  };

  /** The slot number of the rebuild now loading, from its progress record. */
  const loadingSlot = async () => {
    const progress = await waitFor(
      async () => {
        const answer = await set
          .replica(2)
          .get<{ phase: string; slot: number }>(`/rebuilds/${namespace}`);
        return answer.status === 200 && answer.body.phase === 'loading' ? answer.body : undefined;
      },
      { timeoutMs: 5_000, what: 'the rebuild to report phase loading' },
    );
    return progress.slot;
  };

  it('R6b leader stopped mid-load past its leases, a successor rebuild, the leader resumes: refused, namespace usable and complete', async () => {
    const [leader, successor] = [set.replica(0), set.replica(1)];
    const leaderLoad = leader.proxy!.hold(LOADING_STATEMENT);
    const leaderRebuild = leader.post('/rebuild-index', { namespace, force: true });
    await heldBeforeAnswer(leaderLoad, leaderRebuild, 'the leader rebuild');
    const leaderSlot = await loadingSlot();
    leader.pause();
    // Both leases lapse (2 s each) while the leader is stopped: its rebuild lock and its
    // in-progress idempotency record.
    await waitFor(
      async () =>
        !(await set.redis.exists(`lock:vector:rebuild:${namespace}`)) &&
        !(await set.redis.exists(`idem:vector:rebuild:${namespace}`)),
      {
        timeoutMs: 5_000,
        what: 'the stopped leader’s rebuild lock and idempotency record to lapse',
      },
    );

    const successorIndex = successor.proxy!.hold(INDEXING_STATEMENT);
    const successorRebuild = successor.post('/rebuild-index', { namespace, force: true });
    await heldBeforeAnswer(successorIndex, successorRebuild, 'the successor rebuild');

    // The old leader wakes up while the successor is still building.
    leader.resume();
    leaderLoad.release();
    const evicted = await evictedAnswer(leaderRebuild, successorIndex);
    const done = await successorRebuild;
    const problems = await problemsAfter('R6b', evicted, leaderSlot, done);

    // Still operable: a manual rebuild succeeds, a rollback is not a server error.
    const manual = await successor.post('/admin/rebuild-index-manual', { namespace });
    if (manual.status !== 200)
      problems.push(`manual rebuild afterwards: ${describeAnswer(manual)}`);
    const rollback = await successor.post('/rollback', { namespace });
    if (rollback.status >= 500) problems.push(`rollback afterwards: ${describeAnswer(rollback)}`);
    expect(problems).toEqual([]);
  }, 60_000);

  it('R6c rebuild lock force-released mid-load, a manual rebuild elsewhere, the evicted one goes on: refused, namespace usable and complete', async () => {
    const [evictedReplica, successor] = [set.replica(2), set.replica(1)];
    const evictedLoad = evictedReplica.proxy!.hold(LOADING_STATEMENT);
    const evictedRebuild = evictedReplica.post('/rebuild-index', { namespace, force: true });
    await heldBeforeAnswer(evictedLoad, evictedRebuild, 'the rebuild to be evicted');
    const evictedSlot = await loadingSlot();

    const released = await successor.delete(`/lock/lock:vector:rebuild:${namespace}`);
    expect(describeAnswer(released)).toMatch(/^200 /);

    const successorIndex = successor.proxy!.hold(INDEXING_STATEMENT);
    const manual = successor.post('/admin/rebuild-index-manual', { namespace });
    await heldBeforeAnswer(successorIndex, manual, 'the manual rebuild');

    evictedLoad.release();
    const evicted = await evictedAnswer(evictedRebuild, successorIndex);
    expect(await problemsAfter('R6c', evicted, evictedSlot, await manual)).toEqual([]);
  }, 60_000);
});
