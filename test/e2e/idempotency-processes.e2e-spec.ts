import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Redis from 'ioredis';
import { TEST_REDIS_URL } from '../support/env';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

interface Event {
  event: string;
  at?: number;
  status?: string;
  replayed?: boolean;
  result?: { nonce: string; pid: number };
}

const CALLER = join(__dirname, '../support/idem-caller.js');

describe('single-flight across OS processes', () => {
  const redis = new Redis(TEST_REDIS_URL);
  const started: ServiceProcess[] = [];

  afterEach(() => {
    for (const child of started.splice(0)) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
  });

  afterAll(async () => {
    await redis.quit();
  });

  const newKey = () => `idem:test:processes:${randomBytes(4).toString('hex')}`;

  function caller(
    key: string,
    calls: number,
    ttl: number,
    workMs: number,
    pollMs = 100,
    name = 'idem-test',
  ) {
    const process = ServiceProcess.startScript(
      CALLER,
      [TEST_REDIS_URL, key, String(calls), String(ttl), String(workMs), String(pollMs), name],
      { stdin: true },
    );
    started.push(process);
    const events = () =>
      process.stdout
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Event);
    const next = (event: string, timeoutMs = 20_000) =>
      waitFor(() => events().find((e) => e.event === event), {
        timeoutMs,
        what: `${event} from ${process.child.pid}`,
      });
    return {
      process,
      events,
      next,
      ready: () => next('ready'),
      go: () => process.child.stdin!.write('go\n'),
      outcomes: () => events().filter((e) => e.event === 'outcome'),
    };
  }

  const runs = async (key: string) => Number(await redis.get(`${key}:runs`));

  it('200 identical calls over 4 processes run the worker once; every caller gets its result', async () => {
    const key = newKey();
    const callers = Array.from({ length: 4 }, () => caller(key, 50, 5, 300));
    await Promise.all(callers.map((c) => c.ready()));
    callers.forEach((c) => c.go());
    await Promise.all(callers.map((c) => c.next('done')));
    const outcomes = callers.flatMap((c) => c.outcomes());
    expect(outcomes).toHaveLength(200);
    expect(await runs(key)).toBe(1);
    expect(outcomes.every((o) => o.status === 'done')).toBe(true);
    expect(new Set(outcomes.map((o) => JSON.stringify(o.result))).size).toBe(1);
    expect(outcomes.filter((o) => o.replayed === false)).toHaveLength(1);
  }, 40_000);

  it('a SIGKILLed leader is taken over after the in-progress TTL: two executions, never more', async () => {
    const key = newKey();
    const leader = caller(key, 1, 1, 30_000);
    await leader.ready();
    leader.go();
    await waitFor(async () => (await runs(key)) === 1);
    leader.process.kill('SIGKILL');
    const late = Array.from({ length: 3 }, () => caller(key, 3, 1, 200));
    await Promise.all(late.map((c) => c.ready()));
    late.forEach((c) => c.go());
    await Promise.all(late.map((c) => c.next('done')));
    const outcomes = late.flatMap((c) => c.outcomes());
    expect(outcomes.every((o) => o.status === 'done')).toBe(true);
    expect(new Set(outcomes.map((o) => o.result?.nonce)).size).toBe(1);
    expect(await runs(key)).toBe(2);
  }, 40_000);

  it('heartbeats keep a worker running 5× its in-progress TTL from being run twice', async () => {
    const key = newKey();
    const leader = caller(key, 1, 0.4, 2_000);
    await leader.ready();
    leader.go();
    await waitFor(async () => (await runs(key)) === 1);
    const followers = Array.from({ length: 2 }, () => caller(key, 3, 0.4, 200));
    await Promise.all(followers.map((c) => c.ready()));
    followers.forEach((c) => c.go());
    await Promise.all([leader, ...followers].map((c) => c.next('done')));
    expect(await runs(key)).toBe(1);
    const results = [leader, ...followers].flatMap((c) => c.outcomes()).map((o) => o.result?.nonce);
    expect(new Set(results).size).toBe(1);
  }, 40_000);

  it('a leader SIGSTOPped until taken over cannot overwrite the newer result when resumed', async () => {
    const key = newKey();
    const paused = caller(key, 1, 0.6, 1_500);
    await paused.ready();
    paused.go();
    await waitFor(async () => (await runs(key)) === 1);
    paused.process.kill('SIGSTOP');
    const successor = caller(key, 1, 0.6, 200);
    await successor.ready();
    successor.go();
    const taken = await successor.next('done');
    expect(taken).toBeDefined();
    const newer = successor.outcomes()[0];
    expect(newer).toMatchObject({ status: 'done', replayed: false });
    paused.process.kill('SIGCONT');
    await paused.next('done');
    expect(await runs(key)).toBe(2);
    const stored = JSON.parse((await redis.get(key))!) as { status: string; result: string };
    expect(stored.status).toBe('done');
    expect((JSON.parse(stored.result) as { nonce: string }).nonce).toBe(newer.result!.nonce);
  }, 40_000);

  it('a follower whose notification is lost (subscriber killed) finishes within the polling bound', async () => {
    const key = newKey();
    const name = `idem-deaf-${randomBytes(3).toString('hex')}`;
    const pollMs = 150;
    const leader = caller(key, 1, 5, 800);
    const follower = caller(key, 1, 5, 100, pollMs, name);
    await Promise.all([leader.ready(), follower.ready()]);
    leader.go();
    await waitFor(async () => (await runs(key)) === 1);
    // Kill the follower's subscriber connection (it reconnects only after 5 s).
    const clients = (await redis.client('LIST')) as string;
    const subscriber = clients
      .split('\n')
      .find((line) => line.includes(`name=${name}`) && /flags=P/.test(line));
    expect(subscriber).toBeDefined();
    await redis.client('KILL', 'ID', /id=(\d+)/.exec(subscriber!)![1]);
    follower.go();
    await leader.next('done');
    const completedAt = leader.outcomes()[0].at!;
    await follower.next('done');
    const followed = follower.outcomes()[0];
    expect(followed).toMatchObject({ status: 'done', replayed: true });
    expect(followed.at! - completedAt).toBeLessThanOrEqual(pollMs + 150);
  }, 40_000);
});
