import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Pool } from 'pg';
import { runMigrations } from '../../src/database/migrator';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../support/env';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

interface Event {
  event: string;
  fence?: number;
  at?: number;
  ok?: boolean;
  error?: string;
  signalAborted?: boolean;
  reason?: string;
}

const HOLDER = join(__dirname, '../support/lock-holder.js');

function holder(key: string, ttlMs: number, mode: 'hold' | 'take') {
  const process = ServiceProcess.startScript(
    HOLDER,
    [TEST_REDIS_URL, TEST_DATABASE_URL, key, String(ttlMs), mode],
    { stdin: true },
  );
  // JSON event lines only: the library's own warnings (lease lost) are plain log lines.
  const events = () =>
    process.stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Event);
  const next = (name: string, timeoutMs = 15_000) =>
    waitFor(() => events().find((event) => event.event === name), {
      timeoutMs,
      what: `${name} from ${mode}`,
    });
  return { process, next };
}

describe('lock holders that pause or die', () => {
  const pool = new Pool({ connectionString: TEST_DATABASE_URL, max: 2 });
  const started: ServiceProcess[] = [];

  beforeAll(async () => {
    await runMigrations(TEST_DATABASE_URL, { info: () => undefined });
    await pool.query(
      'CREATE TABLE IF NOT EXISTS lock_test_writes (lock_key text, writer text, fence bigint)',
    );
  });

  afterEach(() => {
    for (const child of started.splice(0)) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
  });

  afterAll(async () => {
    await pool.end();
  });

  const track = <T extends { process: ServiceProcess }>(h: T) => {
    started.push(h.process);
    return h;
  };

  it('a holder paused past its TTL is fenced out after SIGCONT, and its signal is aborted', async () => {
    const key = `lock:test:paused:${randomBytes(4).toString('hex')}`;
    const paused = track(holder(key, 1_000, 'hold'));
    const first = await paused.next('acquired');
    paused.process.kill('SIGSTOP');

    const successor = track(holder(key, 1_000, 'take'));
    const second = await successor.next('acquired');
    expect(second.fence).toBe(first.fence! + 1);
    expect(await successor.next('write')).toMatchObject({ ok: true });

    paused.process.kill('SIGCONT');
    paused.process.child.stdin!.write('write\n');
    expect(await paused.next('write')).toMatchObject({
      ok: false,
      error: 'StaleFenceError',
      signalAborted: true,
      reason: 'LockLostError',
    });
    const { rows } = await pool.query<{ fence: string }>(
      'SELECT fence FROM lock_test_writes WHERE lock_key = $1',
      [key],
    );
    expect(rows.map((row) => Number(row.fence))).toEqual([second.fence]);
  }, 30_000);

  it('a holder killed with SIGKILL is succeeded within TTL + one backoff', async () => {
    const ttlMs = 1_500;
    const key = `lock:test:killed:${randomBytes(4).toString('hex')}`;
    const doomed = track(holder(key, ttlMs, 'hold'));
    const first = await doomed.next('acquired');
    const successor = track(holder(key, ttlMs, 'take'));
    // Let the successor start waiting, then kill the holder outright.
    await waitFor(() => successor.process.child.pid !== undefined);
    doomed.process.kill('SIGKILL');
    const second = await successor.next('acquired');
    const waited = second.at! - first.at!;
    // The lease (renewed until the kill) can only lapse a TTL after the last renewal.
    expect(waited).toBeLessThanOrEqual(ttlMs + 1_000);
    expect(second.fence).toBe(first.fence! + 1);
  }, 30_000);
});
