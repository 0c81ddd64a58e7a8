import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import Redis from 'ioredis';
import { Pool } from 'pg';
import { runMigrations } from '../../src/database/migrator';
import { siblingKey } from '../../src/lock/lock-keys';
import { TEST_REDIS_URL } from '../support/env';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { requireBuild } from '../support/service-process';

const WORKER = join(__dirname, '..', 'support', 'lock-torture-worker.js');
const HOLDERS = 4;
const DURATION_MS = 12_000;
const TABLE = 'torture_writes';

interface HolderSummary {
  role: 'holder';
  pid: number;
  holds: number;
  writes: number;
  extends: number;
  lost: number;
  timeouts: number;
  /** Looks at the key in Redis, one before each write. */
  checks: number;
  /** Found the key not its own while its handle, asked right after, still said held. */
  unheld: { fence: number }[];
  /** Writes refused as stale: the holder's fence, and whether its handle still said held. */
  stale: { fence: number; saidHeld: boolean }[];
}

interface ForcerSummary {
  role: 'forcer';
  pid: number;
  /** Fences of the holders it removed. */
  forced: number[];
  changedHands: number;
  free: number;
}

interface Row {
  id: string;
  holder: number;
  fence: string;
  seq: number;
}

/** Runs one torture worker to its end; its summary, or a failure with everything it printed. */
async function runWorker(settings: object): Promise<HolderSummary | ForcerSummary> {
  const child = spawn(process.execPath, [WORKER, JSON.stringify(settings)], {
    env: { PATH: process.env.PATH ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), DURATION_MS + 20_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  const line = stdout.split('\n').find((text) => text.startsWith('{"summary"'));
  if (code !== 0 || !line) {
    throw new Error(`torture worker exited with ${String(code)}:\n${stdout}\n${stderr}`);
  }
  return (JSON.parse(line) as { summary: HolderSummary | ForcerSummary }).summary;
}

/**
 * Four processes fight over one key for a bounded time: random holds, renewals, CPU stalls and
 * extends to random lengths, fenced Postgres writes; a fifth force-releases whoever it sees. The
 * locks are allowed to be taken away (by force) but never to let two holders' fenced writes
 * interleave, and a holder refused as stale must already know it lost the lease, unless it was
 * the one removed by force.
 */
describe('lock torture: 4 holders and a force-releaser, real Redis and Postgres', () => {
  let database: FreshDatabase;
  let pool: Pool;
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
  const key = `lock:test:torture:${randomBytes(4).toString('hex')}`;

  beforeAll(async () => {
    requireBuild();
    database = await createFreshDatabase('vector_torture');
    await runMigrations(database.url, { info: () => undefined });
    pool = new Pool({ connectionString: database.url, max: 2 });
    await pool.query(
      `CREATE TABLE ${TABLE} (id bigserial PRIMARY KEY, holder integer NOT NULL, fence bigint NOT NULL, seq integer NOT NULL)`,
    );
  });

  afterAll(async () => {
    await redis.del(key, siblingKey(key, 'fence'), siblingKey(key, 'forced'));
    await redis.quit();
    await pool?.end();
    await database?.drop();
  });

  it(`no two holders' fenced writes interleave, and fences only grow (${DURATION_MS / 1000} s)`, async () => {
    const common = { redisUrl: TEST_REDIS_URL, databaseUrl: database.url, key, table: TABLE };
    const summaries = await Promise.all([
      ...Array.from({ length: HOLDERS }, () =>
        runWorker({ ...common, role: 'holder', durationMs: DURATION_MS }),
      ),
      runWorker({ ...common, role: 'forcer', durationMs: DURATION_MS }),
    ]);
    const holders = summaries.filter((s): s is HolderSummary => s.role === 'holder');
    const forcer = summaries.find((s): s is ForcerSummary => s.role === 'forcer')!;

    // In commit order of their fence checks (the fence row is locked until commit, so ids
    // are handed out in that order too).
    const { rows } = await pool.query<Row>(
      `SELECT id, holder, fence, seq FROM ${TABLE} ORDER BY id`,
    );
    const writes = rows.map((row) => ({
      holder: row.holder,
      fence: Number(row.fence),
      seq: row.seq,
    }));
    expect(writes.length).toBe(holders.reduce((sum, h) => sum + h.writes, 0));

    // Each lease (fence) belongs to one process and its writes form one unbroken run: the
    // sequence of leases never goes A, B, A. Across runs the fences strictly increase.
    const runs: { fence: number; holder: number; seqs: number[] }[] = [];
    for (const write of writes) {
      const last = runs[runs.length - 1];
      if (last?.fence === write.fence) {
        expect(write.holder).toBe(last.holder);
        last.seqs.push(write.seq);
      } else {
        runs.push({ fence: write.fence, holder: write.holder, seqs: [write.seq] });
      }
    }
    const runFences = runs.map((run) => run.fence);
    const interleaved = runFences.filter((fence, i) => i > 0 && fence <= runFences[i - 1]);
    expect(interleaved).toEqual([]);
    // Within a lease, its writes committed in the order it made them.
    for (const run of runs) expect(run.seqs).toEqual([...run.seqs].sort((a, b) => a - b));
    // The fence Postgres kept is the newest one seen.
    const { rows: fenceRows } = await pool.query<{ fence: string }>(
      'SELECT fence FROM lock_fences WHERE lock_key = $1',
      [key],
    );
    expect(Number(fenceRows[0].fence)).toBeGreaterThanOrEqual(runFences[runFences.length - 1]);

    // A write refused as stale came from a holder that knew it had lost the lease, or that was
    // removed by force (which nobody announces to the holder before its next renewal).
    const forced = new Set(forcer.forced);
    const unannounced = holders
      .flatMap((h) => h.stale.map((stale) => ({ pid: h.pid, ...stale })))
      .filter((stale) => stale.saidHeld && !forced.has(stale.fence));
    expect(unannounced).toEqual([]);
    // Likewise for the key itself: a handle said held only while Redis held the key for it.
    const unheld = holders
      .flatMap((h) => h.unheld.map((check) => ({ pid: h.pid, ...check })))
      .filter((check) => !forced.has(check.fence));
    expect(unheld).toEqual([]);
    expect(holders.reduce((sum, h) => sum + h.checks, 0)).toBeGreaterThanOrEqual(writes.length);

    // It really was a fight: many leases, every process wrote, some were taken by force.
    expect(runs.length).toBeGreaterThanOrEqual(15);
    expect(new Set(runs.map((run) => run.holder)).size).toBe(HOLDERS);
    expect(forcer.forced.length).toBeGreaterThanOrEqual(2);
    expect(holders.reduce((sum, h) => sum + h.extends, 0)).toBeGreaterThan(20);
  }, 60_000);
});
