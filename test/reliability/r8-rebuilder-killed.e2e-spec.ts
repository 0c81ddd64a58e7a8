import { randomBytes } from 'node:crypto';
import { acknowledgedWriteProblems, WriteLedger } from '../support/acknowledged-writes';
import {
  describeAnswer,
  heldBeforeAnswer,
  INDEXING_STATEMENT,
  LOADING_STATEMENT,
} from '../support/namespace-checks';
import { Answer, ReplicaSet } from '../support/replica-harness';
import { UpsertLoad } from '../support/upsert-load';

/** Within this long after the kill the crashed rebuild must show as abandoned. */
const ABANDONED_WITHIN_MS = 3_000;
/** Within this long after the kill a new rebuild on a survivor must have succeeded. */
const NEXT_REBUILD_WITHIN_MS = 6_000;

/** Each phase with a statement that only a rebuild in that phase sends. */
const PHASES = [
  { phase: 'preparing', statement: /count\(\*\)::int AS count FROM/ },
  { phase: 'loading', statement: LOADING_STATEMENT },
  { phase: 'indexing', statement: INDEXING_STATEMENT },
  { phase: 'switching', statement: /ATTACH PARTITION/ },
] as const;

interface PhaseRun {
  phase: string;
  namespace: string;
  ledger: WriteLedger;
  load: UpsertLoad;
  /** What GET /rebuilds/{ns} said while the victim was held. */
  observed?: { phase: string; slot: number; status: string };
  abandonedAfterMs?: number;
  lastProgress?: string;
  upsertsAfterKill?: string;
  rebuild?: { answer: Answer; afterMs: number };
  cleanup?: Answer;
  statistics?: Answer<{ namespaces: NamespaceStats[] }>;
  orphanTables: string[];
}

interface NamespaceStats {
  active_slot: number;
  building_slot: number | null;
  previous_slot: number | null;
  tables: Record<string, { slots: { slot: number }[] }>;
}

/**
 * R8 — the replica running a rebuild is killed (SIGKILL) in each phase: preparing, loading,
 * indexing, switching. Four victims each rebuild their own namespace and are held by their
 * fault proxy at a statement of their phase, then all are killed at once; replica 4 survives
 * and serves upserts throughout. With leases far longer than the test (DEFAULT_LOCK_TTL_MS=60000,
 * DEFAULT_IN_PROGRESS_TTL=300), for every phase: GET /rebuilds/{ns} reports `abandoned` within
 * 3 s; upserts go on; a new rebuild on the survivor succeeds within 6 s (not after a lease
 * expires) with a newer slot number; after /cleanup-slots no orphan slot or table remains; every
 * acknowledged upsert is in the active slot.
 */
describe('R8 the rebuilding replica killed in each rebuild phase', () => {
  let set: ReplicaSet;
  const table = 'questions';
  const runs: PhaseRun[] = [];
  const survivor = () => set.replica(PHASES.length);

  beforeAll(async () => {
    set = await ReplicaSet.start({
      replicas: PHASES.length + 1,
      env: {
        DEFAULT_LOCK_TTL_MS: '60000',
        DEFAULT_IN_PROGRESS_TTL: '300',
        DEFAULT_IDEM_WAIT_TIMEOUT_MS: '1500',
        DEFAULT_WAIT_TIMEOUT_MS: '3000',
      },
    });
    const tag = randomBytes(3).toString('hex');
    for (const { phase } of PHASES) {
      const namespace = `r8-${phase}-${tag}`;
      const ledger = new WriteLedger();
      const items = Array.from({ length: 1_000 }, (_, i) => ({
        obj_ref: `seed-${i}`,
        content: `seed-${i} v1`,
      }));
      const seeded = await survivor().post('/batch-upsert', {
        items,
        table_name: table,
        namespace,
      });
      expect(seeded.status).toBe(200);
      ledger.record(namespace, table, items, 'acked');
      const load = new UpsertLoad({
        namespace,
        table,
        ledger,
        replicas: () => [survivor()],
        writers: 1,
        batchSize: 4,
        pauseMs: 30,
      });
      runs.push({ phase, namespace, ledger, load, orphanTables: [] });
    }

    // Every victim starts its rebuild and is held inside its phase.
    await Promise.all(
      PHASES.map(async ({ statement }, i) => {
        const victim = set.replica(i);
        const hold = victim.proxy!.hold(statement);
        const rebuild = victim.post('/rebuild-index', {
          namespace: runs[i].namespace,
          force: true,
        });
        await heldBeforeAnswer(hold, rebuild, `the ${runs[i].phase} rebuild`);
        const progress = await survivor().get<{ phase: string; slot: number; status: string }>(
          `/rebuilds/${runs[i].namespace}`,
        );
        runs[i].observed = progress.body;
      }),
    );
    const killedAt = performance.now();
    await Promise.all(PHASES.map((_, i) => set.replica(i).kill()));

    await Promise.all(
      runs.map(async (run) => {
        await Promise.all([
          (async () => {
            for (;;) {
              const progress = await survivor().get<{ status: string; phase: string }>(
                `/rebuilds/${run.namespace}`,
              );
              run.lastProgress = describeAnswer(progress);
              if (progress.body.status === 'abandoned') {
                run.abandonedAfterMs = Math.round(performance.now() - killedAt);
                return;
              }
              if (performance.now() - killedAt > ABANDONED_WITHIN_MS + 1_000) return;
              await new Promise((resolve) => setTimeout(resolve, 100));
            }
          })(),
          run.load.waitForAcks(3, 5_000).then(
            () => (run.upsertsAfterKill = 'ok'),
            (error: Error) => (run.upsertsAfterKill = error.message),
          ),
          (async () => {
            for (;;) {
              const answer = await survivor().post(
                '/rebuild-index',
                { namespace: run.namespace, force: true },
                { timeoutMs: 5_000 },
              );
              run.rebuild = { answer, afterMs: Math.round(performance.now() - killedAt) };
              if (answer.status === 200 || run.rebuild.afterMs > NEXT_REBUILD_WITHIN_MS) return;
              await new Promise((resolve) => setTimeout(resolve, 200));
            }
          })(),
        ]);
        run.cleanup = await survivor().post('/cleanup-slots', { namespace: run.namespace });
        run.statistics = await survivor().get(`/statistics?namespace=${run.namespace}`);
      }),
    );
    for (const run of runs) await run.load.stop();
    // Slot tables (and rebuild staging tables) whose slot id the catalog no longer knows.
    const { rows } = await set.db.query<{ relname: string }>(
      `SELECT c.relname FROM pg_class c
       WHERE c.relkind IN ('r', 'p') AND c.relname ~ '^vec_[a-z0-9_]+_s[0-9]+(_load)?$'
         AND NOT EXISTS (
           SELECT 1 FROM vector_slots s
           WHERE s.id = substring(c.relname from '_s([0-9]+)(_load)?$')::bigint)`,
    );
    for (const run of runs) run.orphanTables = rows.map((row) => row.relname);
  }, 120_000);

  afterAll(async () => {
    for (const run of runs) await run.load.stop();
    await ReplicaSet.stopAll();
  }, 30_000);

  it.each(PHASES.map(({ phase }) => phase))('R8 killed while %s', async (phase) => {
    const run = runs.find((r) => r.phase === phase)!;
    const problems: string[] = [];
    if (run.observed?.phase !== phase || run.observed.status !== 'running') {
      problems.push(
        `the victim was to be held in phase ${phase}: progress said ${JSON.stringify(run.observed)}`,
      );
    }
    if (run.abandonedAfterMs === undefined || run.abandonedAfterMs > ABANDONED_WITHIN_MS) {
      problems.push(
        `GET /rebuilds must report status "abandoned" within ${ABANDONED_WITHIN_MS} ms of the kill: ${run.abandonedAfterMs === undefined ? `still ${run.lastProgress}` : `after ${run.abandonedAfterMs} ms`}`,
      );
    }
    if (run.upsertsAfterKill !== 'ok')
      problems.push(`upserts after the kill: ${run.upsertsAfterKill}`);
    const rebuild = run.rebuild!;
    if (rebuild.answer.status !== 200 || rebuild.afterMs > NEXT_REBUILD_WITHIN_MS) {
      problems.push(
        `a new rebuild on a survivor must succeed within ${NEXT_REBUILD_WITHIN_MS} ms of the kill: last answer after ${rebuild.afterMs} ms: ${describeAnswer(rebuild.answer)}`,
      );
    } else if (!((rebuild.answer.body as { slot: number }).slot > run.observed!.slot)) {
      problems.push(
        `slot numbers must only grow: the new rebuild built slot ${(rebuild.answer.body as { slot: number }).slot}, the killed one had slot ${run.observed!.slot}`,
      );
    }
    if (run.cleanup?.status !== 200)
      problems.push(`cleanup-slots: ${describeAnswer(run.cleanup!)}`);
    const stats = run.statistics?.body.namespaces?.[0];
    if (!stats) {
      problems.push(`statistics: ${describeAnswer(run.statistics!)}`);
    } else {
      if (stats.building_slot !== null) {
        problems.push(`no orphan slot may remain: building_slot is ${stats.building_slot}`);
      }
      const allowed = new Set([stats.active_slot, stats.previous_slot]);
      for (const [name, { slots }] of Object.entries(stats.tables)) {
        const extra = slots.map((s) => s.slot).filter((slot) => !allowed.has(slot));
        if (extra.length > 0) {
          problems.push(
            `no orphan slot may remain: ${name} still has slots ${extra.join(', ')} (active ${stats.active_slot}, previous ${stats.previous_slot})`,
          );
        }
      }
    }
    if (run.orphanTables.length > 0) {
      problems.push(`slot tables without a catalog row: ${run.orphanTables.join(', ')}`);
    }
    problems.push(...(await acknowledgedWriteProblems(set.db, run.ledger)));
    expect(problems).toEqual([]);
  });
});
