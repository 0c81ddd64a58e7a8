import { randomBytes } from 'node:crypto';
import { acknowledgedWriteProblems, WriteLedger } from '../support/acknowledged-writes';
import { HealthMonitor } from '../support/health-monitor';
import { seedNamespace } from '../support/namespace-checks';
import { ReplicaSet } from '../support/replica-harness';
import { answerReport, LoadAnswer, UpsertLoad } from '../support/upsert-load';
import { waitFor } from '../support/wait';

/** Every request must be answered within this bound while Redis is down or hung. */
const ANSWER_BOUND_MS = 5_000;
const BOUND = 'every request is answered within 5 s with 2xx or 503';

/**
 * R4 — Redis crashes (SIGKILL, then a restart without persistence) and hangs (SIGSTOP) while two
 * replicas serve upserts and searches. Every request must be answered within 5 s with 2xx or
 * 503 (never 500, never a hang); liveness stays 200; readiness is 503 while Redis is away;
 * the service recovers by itself; nothing acknowledged is lost. After a restart that lost every
 * lock and fence counter, upserts must succeed at once (no run of 409 "stale fence" answers).
 */
describe('R4 Redis stopped and paused under load', () => {
  let set: ReplicaSet;
  const namespace = `r4-${randomBytes(3).toString('hex')}`;
  const table = 'questions';
  const ledger = new WriteLedger();

  beforeAll(async () => {
    set = await ReplicaSet.start({
      replicas: 2,
      proxied: false,
      env: { HEALTH_CHECK_TIMEOUT_MS: '500', REDIS_CONNECT_TIMEOUT_MS: '1000' },
    });
    await seedNamespace(set.replica(0), namespace, table);
  }, 60_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  afterEach(async () => {
    // Whatever a failed test left behind, the next one starts with Redis up.
    if (!set) return;
    if (set.redis.running) set.redis.resume();
    else await set.redis.start();
  });

  const startLoad = (prefix: string) =>
    new UpsertLoad({
      namespace,
      table,
      ledger,
      prefix,
      replicas: () => set.replicas,
      writers: 2,
      batchSize: 6,
      pauseMs: 20,
      search: true,
      timeoutMs: ANSWER_BOUND_MS + 3_000,
    });

  /** Answers outside 2xx/503, and answers slower than the bound (status 0: none at all). */
  const violations = (answers: readonly LoadAnswer[]) =>
    answers
      .filter(
        (a) => !((a.status >= 200 && a.status < 300) || a.status === 503) || a.ms > ANSWER_BOUND_MS,
      )
      .slice(0, 10);

  /** Requests in flight at any moment of the window (sent before it and still waiting, too). */
  const overlaps = (answer: LoadAnswer, window: { from: number; to: number }) =>
    answer.at <= window.to && answer.at + answer.ms >= window.from;

  const allReady = async (status: number) => {
    const answers = await Promise.all(
      set.replicas.map((replica) => replica.get('/health/ready', { timeoutMs: 3_000 })),
    );
    return answers.every((answer) => answer.status === status);
  };

  it('R4a Redis killed and restarted empty: 2xx or 503 within 5 s, liveness 200, readiness 503 while down, recovery unaided', async () => {
    const load = startLoad('crash');
    const health = new HealthMonitor(set.replicas);
    let outage: { from: number; to: number };
    try {
      // Enough fenced upserts that Postgres has recorded fences well above 1.
      await load.waitForAcks(20, 20_000);
      const from = Date.now();
      await set.redis.kill();
      await waitFor(() => allReady(503), {
        timeoutMs: 3_000,
        what: 'readiness 503 on every replica while Redis is down',
      });
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      // The window closes as the restart begins: what follows is R4b's subject.
      outage = { from, to: Date.now() };
      await set.redis.start();
      await waitFor(() => allReady(200), {
        timeoutMs: 10_000,
        what: 'readiness 200 on every replica after Redis restarts',
      });
    } finally {
      await load.stop();
      await health.stop();
    }
    const duringOutage = load.answers.filter((a) => overlaps(a, outage));
    expect(duringOutage.length).toBeGreaterThan(0);
    expect(answerReport(BOUND, violations(duringOutage), duringOutage)).toEqual({
      invariant: BOUND,
      bad: [],
    });
    // Liveness never failed.
    expect(health.samples.filter((s) => s.probe === 'live' && s.status !== 200)).toEqual([]);
  }, 60_000);

  it('R4b after a restart without persistence, upserts succeed at once (no run of stale-fence 409s)', async () => {
    await waitFor(() => allReady(200), { timeoutMs: 10_000, what: 'readiness 200' });
    const answers = [];
    for (let i = 0; i < 6; i++) {
      const replica = set.replica(i % set.replicas.length);
      const items = [{ obj_ref: `after-restart-${i}`, content: `after-restart-${i} v1` }];
      const answer = await replica.post('/batch-upsert', { items, table_name: table, namespace });
      ledger.record(namespace, table, items, answer.status === 200 ? 'acked' : 'refused');
      answers.push({
        replica: replica.index,
        status: answer.status,
        detail: (answer.body as { detail?: string }).detail,
      });
    }
    // Fencing survives the loss of Redis's fence counters without refusing writers of new,
    // valid leases.
    const invariant = 'upserts under a new lease succeed after Redis restarts empty';
    expect({ invariant, refused: answers.filter((a) => a.status !== 200) }).toEqual({
      invariant,
      refused: [],
    });
  }, 30_000);

  it('R4c Redis hung (SIGSTOP) past the answer bound: 2xx or 503 within 5 s, liveness 200, readiness 503, recovery after SIGCONT', async () => {
    const load = startLoad('hang');
    const health = new HealthMonitor(set.replicas);
    let window: { from: number; to: number };
    try {
      await load.waitForAcks(3, 10_000);
      const from = Date.now();
      set.redis.pause();
      await waitFor(() => allReady(503), {
        timeoutMs: 3_000,
        what: 'readiness 503 on every replica while Redis is hung',
      });
      // Longer than the answer bound: a request that waits on Redis without a deadline shows.
      await new Promise((resolve) => setTimeout(resolve, ANSWER_BOUND_MS + 1_000));
      window = { from, to: Date.now() };
      set.redis.resume();
      await waitFor(() => allReady(200), {
        timeoutMs: 10_000,
        what: 'readiness 200 after Redis resumes',
      });
      await load.waitForAcks(3, 10_000);
    } finally {
      set.redis.resume();
      await load.stop();
      await health.stop();
    }
    const during = load.answers.filter((a) => overlaps(a, window));
    expect(during.length).toBeGreaterThan(0);
    expect(answerReport(BOUND, violations(during), during)).toEqual({ invariant: BOUND, bad: [] });
    expect(health.samples.filter((s) => s.probe === 'live' && s.status !== 200)).toEqual([]);
  }, 60_000);

  it('R4d lost no acknowledged upsert', async () => {
    expect(ledger.acknowledgedCount).toBeGreaterThan(20);
    expect(await acknowledgedWriteProblems(set.db, ledger)).toEqual([]);
  });
});
