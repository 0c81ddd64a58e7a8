import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { TestApp, startTestApp } from '../support/app';
import { testEnv } from '../support/env';
import { FakeEmbeddingsServer } from '../support/fake-embeddings-server';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { freePort } from '../support/ports';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

/**
 * Faults that take a connection or a whole process away from under a request: a Postgres
 * backend terminated mid-transaction, and a replica SIGKILLed in the middle of a rebuild.
 */
describe('vector replicas under terminated backends and killed processes', () => {
  let database: FreshDatabase;
  let pool: Pool;
  let embeddings: FakeEmbeddingsServer;
  /** In-process replica with model m1: seeds namespaces, and survives the faults. */
  let survivor: TestApp;

  const env = (model: string) => ({
    DATABASE_URL: database.url,
    EMBEDDING_PROVIDER: 'openai',
    EMBEDDING_API_URL: embeddings.url,
    EMBEDDING_MODEL: model,
    EMBEDDING_DIMENSION: '8',
    EMBEDDING_MAX_RETRIES: '0',
  });

  beforeAll(async () => {
    database = await createFreshDatabase('vector_process_faults');
    pool = new Pool({ connectionString: database.url, max: 4 });
    embeddings = await FakeEmbeddingsServer.start(8);
    survivor = await startTestApp(env('m1'));
  });

  afterAll(async () => {
    await survivor?.close();
    await pool?.end();
    await embeddings?.close();
    await database?.drop();
  });

  async function startReplica(model: string) {
    const port = await freePort();
    const replica = ServiceProcess.start('main.js', testEnv({ ...env(model), PORT: String(port) }));
    const url = `http://127.0.0.1:${port}/api/v1/vector`;
    await waitFor(async () => (await fetch(`${url}/health/ready`).catch(() => undefined))?.ok, {
      timeoutMs: 20_000,
      what: 'replica ready',
    });
    return { replica, url };
  }

  const post = async (url: string, body: object) => {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };

  const newNamespace = () => `pf-${randomBytes(4).toString('hex')}`;
  const seed = (namespace: string, count: number) =>
    survivor.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        table_name: 'questions',
        namespace,
        items: Array.from({ length: count }, (_, i) => ({
          obj_ref: `seed-${i}`,
          content: `seed ${i}`,
        })),
      })
      .expect(200);

  const waitingQuery = (pattern: string) =>
    waitFor(
      async () =>
        (
          await pool.query<{ pid: number }>(
            `SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
            [pattern],
          )
        ).rows[0]?.pid,
      { intervalMs: 20, what: pattern },
    );

  it('answers 503 when its backend is terminated mid-transaction, and goes on serving', async () => {
    const namespace = newNamespace();
    await seed(namespace, 3);
    const { replica, url } = await startReplica('m1');
    try {
      // Hold the namespace row so the replica's upsert waits inside its transaction.
      const blocker = await pool.connect();
      try {
        await blocker.query('BEGIN');
        await blocker.query('SELECT 1 FROM vector_namespaces WHERE namespace = $1 FOR UPDATE', [
          namespace,
        ]);
        const upsert = post(`${url}/batch-upsert`, {
          table_name: 'questions',
          namespace,
          items: [{ obj_ref: 'cut', content: 'cut off' }],
        });
        const pid = await waitingQuery('%FOR SHARE%');
        await pool.query('SELECT pg_terminate_backend($1)', [pid]);
        const answer = await upsert;
        expect(answer.status).toBe(503);
        expect(answer.body).toMatchObject({ status: 503 });
      } finally {
        await blocker.query('ROLLBACK');
        blocker.release();
      }
      expect(replica.child.exitCode).toBeNull();
      const again = await post(`${url}/batch-upsert`, {
        table_name: 'questions',
        namespace,
        items: [{ obj_ref: 'after', content: 'after the cut' }],
      });
      expect(again.status).toBe(200);
      const { rows } = await pool.query<{ obj_ref: string }>(
        `SELECT obj_ref FROM vec_questions WHERE slot_id = (
           SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1) ORDER BY obj_ref`,
        [namespace],
      );
      expect(rows.map((row) => row.obj_ref)).toEqual(['after', 'seed-0', 'seed-1', 'seed-2']);
    } finally {
      replica.kill('SIGKILL');
      await replica.exited;
    }
  });

  it('a rebuild whose replica was killed shows as abandoned, stops taking writes, and the next one starts at once', async () => {
    const namespace = newNamespace();
    await seed(namespace, 30);
    // Model m2 re-embeds every item: the killed replica's rebuild waits on this answer.
    const { replica, url } = await startReplica('m2');
    let release!: () => void;
    embeddings.answer({ kind: 'wait', until: new Promise<void>((r) => (release = r)) });
    const before = embeddings.requests.length;
    const rebuild = post(`${url}/rebuild-index`, { namespace }).catch(() => null);
    await waitFor(() => embeddings.requests.length > before, { what: 'rebuild loading' });
    const { rows } = await pool.query<{ id: string; slot: number }>(
      `SELECT s.id, s.slot FROM vector_namespaces n
       JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.building_slot
       WHERE n.namespace = $1`,
      [namespace],
    );
    const orphan = `vec_questions_s${Number(rows[0].id)}`;
    replica.kill('SIGKILL');
    await replica.exited;
    release();
    expect(await rebuild).toBeNull();

    // Postgres notices the dead connection at once: progress says so, upserts skip the orphan.
    await waitFor(
      async () =>
        (await survivor.http.get(`/api/v1/vector/rebuilds/${namespace}`)).body.status ===
        'abandoned',
      { timeoutMs: 3_000, what: 'progress abandoned' },
    );
    await survivor.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        table_name: 'questions',
        namespace,
        items: [{ obj_ref: 'late', content: 'written after the crash' }],
      })
      .expect(200);
    expect((await pool.query(`SELECT 1 FROM ${orphan} WHERE obj_ref = 'late'`)).rowCount).toBe(0);

    // The dead run's lock (60 s lease) and idempotency record (300 s) do not hold the next one.
    const started = performance.now();
    const next = await survivor.http.post('/api/v1/vector/rebuild-index').send({ namespace });
    expect(next.status).toBe(200);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(next.body).toMatchObject({ questions_updated: 31 });
    expect(next.body.slot).toBeGreaterThan(rows[0].slot);
    await survivor.http
      .post('/api/v1/vector/cleanup-slots')
      .send({ namespace, keep_previous: false })
      .expect(200);
    const slots = await pool.query<{ slot: number; status: string }>(
      'SELECT slot, status FROM vector_slots WHERE namespace = $1',
      [namespace],
    );
    expect(slots.rows).toEqual([{ slot: next.body.slot, status: 'active' }]);
    expect((await pool.query('SELECT to_regclass($1) AS t', [orphan])).rows[0].t).toBeNull();
  });
});
