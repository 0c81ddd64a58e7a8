import { randomBytes } from 'node:crypto';
import { testEnv } from '../support/env';
import { freePort } from '../support/ports';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

describe('two replicas (OS processes) receiving the same rebuild request', () => {
  const replicas: { process: ServiceProcess; url: string }[] = [];

  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const port = await freePort();
      const process = ServiceProcess.start(
        'main.js',
        testEnv({ PORT: String(port), LOG_LEVEL: 'warn' }),
      );
      replicas.push({ process, url: `http://127.0.0.1:${port}/api/v1/vector` });
    }
    await Promise.all(
      replicas.map(({ url }) =>
        waitFor(async () => (await fetch(`${url}/health/live`).catch(() => undefined))?.ok, {
          timeoutMs: 20_000,
          what: `${url} live`,
        }),
      ),
    );
  }, 30_000);

  afterAll(async () => {
    for (const { process } of replicas) process.kill('SIGTERM');
    await Promise.all(replicas.map(({ process }) => process.exited));
  });

  const post = async (url: string, body: object) => {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return {
      status: response.status,
      retryAfter: response.headers.get('retry-after'),
      body: (await response.json()) as Record<string, unknown>,
    };
  };

  it('runs the rebuild once; every 2xx answer carries the same result', async () => {
    const namespace = `replicas-${randomBytes(4).toString('hex')}`;
    for (let start = 0; start < 2_000; start += 500) {
      const items = Array.from({ length: 500 }, (_, i) => ({
        obj_ref: `item-${start + i}`,
        content: `replicated item ${start + i}`,
      }));
      const seeded = await post(`${replicas[start % 2 === 0 ? 0 : 1].url}/batch-upsert`, {
        items,
        table_name: 'questions',
        namespace,
      });
      expect(seeded.status).toBe(200);
    }
    const answers = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        post(`${replicas[i % 2].url}/rebuild-index`, { namespace, force: false }),
      ),
    );
    const done = answers.filter((answer) => answer.status === 200);
    expect(done.length).toBeGreaterThan(0);
    for (const answer of answers.filter((a) => a.status !== 200)) {
      expect(answer.status).toBe(409);
      expect(answer.retryAfter).not.toBeNull();
    }
    expect(new Set(done.map((answer) => JSON.stringify(answer.body))).size).toBe(1);
    expect(done[0].body).toMatchObject({
      success: true,
      namespace,
      slot: 2,
      previous_slot: 1,
      questions_updated: 2_000,
    });

    const stats = await fetch(`${replicas[1].url}/statistics?namespace=${namespace}`);
    const body = (await stats.json()) as {
      namespaces: { active_slot: number; tables: { questions: { slots: { slot: number }[] } } }[];
    };
    expect(body.namespaces[0].active_slot).toBe(2);
    expect(body.namespaces[0].tables.questions.slots.map((slot) => slot.slot)).toEqual([1, 2]);

    // Asked again without force: the cached result, no third slot. With force: one more run.
    const cached = await post(`${replicas[1].url}/rebuild-index`, { namespace, force: false });
    expect(cached.body).toEqual(done[0].body);
    const forced = await post(`${replicas[0].url}/rebuild-index`, { namespace, force: true });
    expect(forced.body).toMatchObject({ slot: 3, previous_slot: 2 });
  }, 60_000);
});
