import { randomBytes, randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { Pool } from 'pg';
import { testEnv } from '../support/env';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { freePort } from '../support/ports';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

const DIMENSION = 8;
const NDJSON = 'application/x-ndjson';

const vectorOf = (i: number) =>
  Array.from({ length: DIMENSION }, (_, d) => Math.round(Math.sin(i * 0.37 + d + 1) * 1e4) / 1e4);

const lines = (from: number, to: number, content = (i: number) => `imported ${i}`) => {
  const out: string[] = [];
  for (let i = from; i < to; i++) {
    out.push(JSON.stringify({ obj_ref: `seed-${i}`, content: content(i), embedding: vectorOf(i) }));
  }
  return out.join('\n') + '\n';
};

/**
 * The service SIGKILLed in the middle of an import, then started again: nothing of the import
 * is visible, no table of it is left, and its progress reads abandoned.
 */
describe('vector import: the service killed mid-import', () => {
  let database: FreshDatabase;
  let pool: Pool;
  const running: ServiceProcess[] = [];

  beforeAll(async () => {
    database = await createFreshDatabase('vector_import_faults');
    pool = new Pool({ connectionString: database.url, max: 4 });
  });

  afterAll(async () => {
    for (const service of running) service.kill();
    await Promise.all(running.map((service) => service.exited));
    await pool?.end();
    await database?.drop();
  });

  async function startService(extra: Record<string, string> = {}) {
    const port = await freePort();
    const service = ServiceProcess.start(
      'main.js',
      testEnv({
        DATABASE_URL: database.url,
        EMBEDDING_DIMENSION: String(DIMENSION),
        LOG_LEVEL: 'warn',
        PORT: String(port),
        ...extra,
      }),
    );
    running.push(service);
    const url = `http://127.0.0.1:${port}/api/v1/vector`;
    await waitFor(async () => (await fetch(`${url}/health/ready`).catch(() => undefined))?.ok, {
      timeoutMs: 20_000,
      what: 'service ready',
    });
    return { service, url };
  }

  const kill = async (service: ServiceProcess) => {
    service.kill('SIGKILL');
    expect((await service.exited).signal).toBe('SIGKILL');
  };

  /** Starts an import whose body the test writes; the answer never matters here. */
  const openImport = (url: string, namespace: string, id: string) => {
    const request = httpRequest(`${url}/import?table_name=questions&namespace=${namespace}`, {
      method: 'POST',
      headers: { 'content-type': NDJSON, 'x-import-id': id },
    });
    request.on('error', () => undefined);
    request.on('response', (response) => response.resume());
    return request;
  };

  const importRow = async (id: string) =>
    (
      await pool.query<{ status: string; lines: string; mode: string | null }>(
        'SELECT status, lines, mode FROM vector_imports WHERE id = $1',
        [id],
      )
    ).rows[0];

  /** Item tables that belong to no slot, and any staging, side or import table. */
  const strayTables = async () =>
    (
      await pool.query<{ relname: string }>(
        `SELECT c.relname FROM pg_class c
         WHERE c.relkind IN ('r', 'p') AND c.relname ~ '^vec_questions_'
           AND (c.relname !~ '^vec_questions_s[0-9]+$'
                OR NOT EXISTS (SELECT 1 FROM vector_slots s
                               WHERE c.relname = 'vec_questions_s' || s.id))`,
      )
    ).rows.map((row) => row.relname);

  const contents = async (namespace: string) => {
    const { rows } = await pool.query<{ obj_ref: string; content: string }>(
      `SELECT i.obj_ref, i.content FROM vec_questions i
       JOIN vector_slots s ON s.id = i.slot_id
       JOIN vector_namespaces n ON n.namespace = s.namespace AND n.active_slot = s.slot
       WHERE n.namespace = $1`,
      [namespace],
    );
    return new Map(rows.map((row) => [row.obj_ref, row.content]));
  };

  const progressOf = async (url: string, id: string) =>
    (await (await fetch(`${url}/imports/${id}`)).json()) as Record<string, unknown>;

  it('killed while receiving lines: no half import, no staging table, progress abandoned', async () => {
    const first = await startService();
    const namespace = `if-${randomBytes(4).toString('hex')}`;
    const seeded = await fetch(`${first.url}/batch-upsert`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        table_name: 'questions',
        namespace,
        items: Array.from({ length: 1_000 }, (_, i) => ({
          obj_ref: `seed-${i}`,
          content: `seed ${i}`,
          embedding: vectorOf(i),
        })),
      }),
    });
    expect(seeded.status).toBe(200);
    const before = await contents(namespace);
    const id = randomUUID();
    const request = openImport(first.url, namespace, id);
    // 25k lines sent (replacing the seeds and adding more), the body not ended.
    request.write(lines(0, 25_000));
    await waitFor(async () => Number((await importRow(id))?.lines ?? 0) >= 20_000, {
      timeoutMs: 20_000,
      what: 'the import to receive 20k lines',
    });
    // Its progress, while the body is still arriving, under the id the client chose.
    expect(await progressOf(first.url, id)).toMatchObject({ status: 'receiving', mode: null });
    expect(
      (await pool.query(`SELECT 1 FROM pg_class WHERE relname ~ '_import[0-9]+$'`)).rowCount,
    ).toBe(1);
    await kill(first.service);
    request.destroy();

    const second = await startService();
    expect(await progressOf(second.url, id)).toMatchObject({ status: 'abandoned', rows: 20_000 });
    expect(await strayTables()).toEqual([]);
    expect(await contents(namespace)).toEqual(before);
    await kill(second.service);
  }, 60_000);

  it('killed while indexing its new slot: the namespace keeps its slot, the new one is dropped', async () => {
    const first = await startService();
    const namespace = `if-${randomBytes(4).toString('hex')}`;
    const id = randomUUID();
    const request = openImport(first.url, namespace, id);
    // An empty namespace: the import loads a new slot and builds its index (HNSW defaults,
    // long enough to be caught in the act).
    for (let from = 0; from < 100_000; from += 20_000) request.write(lines(from, from + 20_000));
    request.end();
    await waitFor(async () => (await importRow(id))?.status === 'indexing', {
      timeoutMs: 40_000,
      intervalMs: 10,
      what: 'the import to index its slot',
    });
    expect((await importRow(id)).mode).toBe('slot');
    await kill(first.service);

    const second = await startService();
    expect(await progressOf(second.url, id)).toMatchObject({ status: 'abandoned', mode: 'slot' });
    // The sweep at start-up dropped the dead import's slot along with its staging table.
    await waitFor(async () => (await strayTables()).length === 0, {
      what: 'no stray tables',
    }).catch(async (error: unknown) => {
      throw new Error(`stray tables: ${(await strayTables()).join(', ')}`, { cause: error });
    });
    const { rows } = await pool.query(
      `SELECT active_slot, building_slot FROM vector_namespaces WHERE namespace = $1`,
      [namespace],
    );
    expect(rows[0]).toEqual({ active_slot: 1, building_slot: null });
    expect((await contents(namespace)).size).toBe(0);
    // A new import of the same rows goes through.
    const again = await fetch(`${second.url}/import?table_name=questions&namespace=${namespace}`, {
      method: 'POST',
      headers: { 'content-type': NDJSON },
      body: lines(0, 1_000),
    });
    expect(again.status).toBe(200);
    expect((await contents(namespace)).size).toBe(1_000);
    await kill(second.service);
  }, 90_000);
});
