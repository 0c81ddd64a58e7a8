import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { WriteLedger, acknowledgedWriteProblems, outcomeOf } from '../support/acknowledged-writes';
import { TestApp, startTestApp } from '../support/app';
import { testEnv } from '../support/env';
import { FakeEmbeddingsServer } from '../support/fake-embeddings-server';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { freePort } from '../support/ports';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

/**
 * SIGTERM of a replica (a rolling restart): it keeps serving while it drains, and work that will
 * not finish — a rebuild — is stopped and handed over at once: its lock released, its
 * idempotency record abandoned, so another replica starts the same rebuild immediately instead
 * of after leases run out. Real processes, a real signal.
 */
describe('Shutdown hands work over at once', () => {
  const DIMENSION = 8;
  let database: FreshDatabase;
  let pool: Pool;
  let embeddings: FakeEmbeddingsServer;
  /** Model m1: seeds namespaces with provider vectors (which an m2 rebuild re-embeds). */
  let writer: TestApp;
  /** Model m2: takes the rebuild over. */
  let survivor: TestApp;

  const env = (model: string) => ({
    DATABASE_URL: database.url,
    EMBEDDING_PROVIDER: 'openai',
    EMBEDDING_API_URL: embeddings.url,
    EMBEDDING_MODEL: model,
    EMBEDDING_DIMENSION: String(DIMENSION),
    EMBEDDING_MAX_RETRIES: '0',
  });

  beforeAll(async () => {
    database = await createFreshDatabase('shutdown_handover');
    pool = new Pool({ connectionString: database.url, max: 4 });
    embeddings = await FakeEmbeddingsServer.start(DIMENSION);
    writer = await startTestApp(env('m1'));
    survivor = await startTestApp(env('m2'));
  });

  afterAll(async () => {
    await Promise.all([writer?.close(), survivor?.close()]);
    await pool?.end();
    await embeddings?.close();
    await database?.drop();
  });

  const newNamespace = () => `sh-${randomBytes(4).toString('hex')}`;
  const clientVector = (seed: number) =>
    Array.from({ length: DIMENSION }, (_, i) => ((seed * 31 + i * 7) % 13) + 1);

  async function startReplica(model: string, extra: Record<string, string> = {}) {
    const port = await freePort();
    const replica = ServiceProcess.start(
      'main.js',
      testEnv({ ...env(model), PORT: String(port), ...extra }),
    );
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

  it('keeps serving writes while it drains, and leaves no lock behind', async () => {
    const namespace = newNamespace();
    const { replica, url } = await startReplica('m1', {
      SHUTDOWN_DELAY_MS: '1500',
      SHUTDOWN_GRACE_MS: '10000',
    });
    const item = (ref: string) => ({
      table_name: 'questions',
      namespace,
      items: [{ obj_ref: ref, content: `${ref} content` }],
    });
    expect((await post(`${url}/batch-upsert`, item('before'))).status).toBe(200);
    const signalled = performance.now();
    replica.kill('SIGTERM');
    await waitFor(async () => (await fetch(`${url}/health/ready`)).status === 503, {
      what: 'readiness failing',
    });
    // Load balancers still route here for SHUTDOWN_DELAY_MS: writes must still work.
    const during = await post(`${url}/batch-upsert`, item('during'));
    expect(during.status).toBe(200);
    const exited = await replica.exited;
    expect(exited.code).toBe(0);
    // The delay, then a drain with nothing in flight: well within the grace period.
    expect(performance.now() - signalled).toBeLessThan(5_000);
    const { rows } = await pool.query<{ obj_ref: string }>(
      `SELECT obj_ref FROM vec_questions v JOIN vector_namespaces n
         ON n.namespace = $1
       JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.active_slot
       WHERE v.slot_id = s.id ORDER BY obj_ref`,
      [namespace],
    );
    expect(rows.map((row) => row.obj_ref)).toEqual(['before', 'during']);
    const status = await survivor.http
      .get(`/api/v1/vector/lock-status/lock:vector:upsert:questions:${namespace}`)
      .expect(200);
    expect(status.body.locked).toBe(false);
  });

  it('stops a rebuild on SIGTERM and another replica starts the same rebuild within a second, losing no acknowledged write', async () => {
    const namespace = newNamespace();
    await writer.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        table_name: 'questions',
        namespace,
        items: Array.from({ length: 30 }, (_, i) => ({ obj_ref: `seed-${i}`, content: `s${i}` })),
      })
      .expect(200);
    const { replica, url } = await startReplica('m2', { SHUTDOWN_GRACE_MS: '10000' });

    // The replica's rebuild waits for an embeddings answer that never comes by itself.
    let release!: () => void;
    embeddings.answer({ kind: 'wait', until: new Promise<void>((resolve) => (release = resolve)) });
    const before = embeddings.requests.length;
    const doomed = post(`${url}/rebuild-index`, { namespace }).catch(() => ({
      status: 0,
      body: {},
    }));
    await waitFor(() => embeddings.requests.length > before, { what: 'the rebuild re-embedding' });
    const { rows: first } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_rebuilds WHERE namespace = $1 ORDER BY id DESC LIMIT 1',
      [namespace],
    );

    // Writes keep coming through the other replica all along (client vectors: both models).
    const ledger = new WriteLedger();
    let writing = true;
    let written = 0;
    const load = (async () => {
      for (let n = 0; writing; n++) {
        const items = [{ obj_ref: `w-${n % 40}`, content: `w${n}`, embedding: clientVector(n) }];
        const settle = ledger.send(namespace, 'questions', items);
        const res = await writer.http
          .post('/api/v1/vector/batch-upsert')
          .send({ table_name: 'questions', namespace, items })
          .catch(() => ({ status: 0 }));
        settle(outcomeOf(res));
        written++;
      }
    })();

    try {
      await waitFor(() => written > 5, { what: 'writes before the signal' });
      const signalled = performance.now();
      replica.kill('SIGTERM');
      const takeover = survivor.http
        .post('/api/v1/vector/rebuild-index')
        .send({ namespace })
        .then((res) => res);
      await waitFor(
        async () =>
          (
            await pool.query(
              `SELECT 1 FROM vector_rebuilds WHERE namespace = $1 AND id > $2 AND status = 'running'`,
              [namespace, first[0].id],
            )
          ).rowCount === 1,
        { intervalMs: 10, timeoutMs: 15_000, what: "the survivor's rebuild running" },
      );
      const handOverMs = performance.now() - signalled;
      console.log(`hand-over ${Math.round(handOverMs)} ms`);
      expect(handOverMs).toBeLessThan(1_000);

      const stopped = await doomed;
      expect(stopped.status).toBe(503);
      const exited = await replica.exited;
      expect(exited.code).toBe(0);
      console.log(`exit ${Math.round(performance.now() - signalled)} ms`);
      release();
      const answer = await takeover;
      expect(answer.status).toBe(200);
      expect(answer.body.previous_slot).toBe(1);
      const mark = written;
      await waitFor(() => written > mark + 5, { what: 'writes after the switch' });
    } finally {
      writing = false;
      release();
      await load;
      replica.kill('SIGKILL');
    }
    expect(await acknowledgedWriteProblems(pool, ledger)).toEqual([]);
    const { rows } = await pool.query<{ status: string }>(
      'SELECT status FROM vector_rebuilds WHERE id = $1',
      [first[0].id],
    );
    expect(rows[0].status).toBe('failed');
    // The stopped rebuild's slot was left to its successor, which dropped it.
    const { rows: slots } = await pool.query<{ slot: number }>(
      'SELECT slot FROM vector_slots WHERE namespace = $1 ORDER BY slot',
      [namespace],
    );
    expect(slots.map((row) => row.slot)).toEqual([1, 3]);
  });
});
