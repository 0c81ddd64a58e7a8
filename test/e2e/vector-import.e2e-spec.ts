import { randomBytes, randomUUID } from 'node:crypto';
import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { TestApp, startTestApp } from '../support/app';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { waitFor } from '../support/wait';

const DIMENSION = 8;
const NDJSON = 'application/x-ndjson';

/** A client embedding of DIMENSION numbers, never all zeros, different per i. */
const vectorOf = (i: number) =>
  Array.from({ length: DIMENSION }, (_, d) => Math.round(Math.sin(i * 0.37 + d + 1) * 1e4) / 1e4);

const lineOf = (i: number, prefix = 'imp', content = `imported item ${i}`) =>
  JSON.stringify({ obj_ref: `${prefix}-${i}`, content, embedding: vectorOf(i) });

const ndjson = (count: number, line: (i: number) => string = (i) => lineOf(i)) => {
  const lines: string[] = [];
  for (let i = 0; i < count; i++) lines.push(line(i));
  return lines.join('\n') + '\n';
};

describe('Vector import: streamed NDJSON', () => {
  let app: TestApp;
  let pool: Pool;
  let database: FreshDatabase;

  beforeAll(async () => {
    // Its own database: the shared one may hold migrations of other branches.
    database = await createFreshDatabase('vector_import');
    // 8-dimensional vectors and a light HNSW build keep 200k rows well under a minute.
    app = await startTestApp({
      LOG_LEVEL: 'error',
      EMBEDDING_DIMENSION: String(DIMENSION),
      HNSW_M: '4',
      HNSW_EF_CONSTRUCTION: '8',
      IMPORT_MAX_LINES: '300000',
      DATABASE_URL: database.url,
    });
    pool = app.app.get<Pool>(PG_POOL);
  });

  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });

  const newNamespace = () => `imp-${randomBytes(4).toString('hex')}`;

  const importBody = (namespace: string, body: string, headers: Record<string, string> = {}) =>
    app.http
      .post(`/api/v1/vector/import?table_name=questions&namespace=${namespace}`)
      .set({ 'content-type': NDJSON, ...headers })
      .send(body);

  const upsert = (namespace: string, items: object[]) =>
    app.http
      .post('/api/v1/vector/batch-upsert')
      .send({ items, table_name: 'questions', namespace });

  const seed = async (namespace: string, count: number) => {
    for (let start = 0; start < count; start += 1_000) {
      const items = Array.from({ length: Math.min(1_000, count - start) }, (_, i) => ({
        obj_ref: `seed-${start + i}`,
        content: `seed ${start + i}`,
        embedding: vectorOf(start + i + 7),
      }));
      await upsert(namespace, items).expect(200);
    }
  };

  /** obj_ref → content of the namespace's active slot. */
  const activeRows = async (namespace: string) => {
    const { rows } = await pool.query<{ id: string }>(
      `SELECT s.id FROM vector_slots s JOIN vector_namespaces n
         ON n.namespace = s.namespace AND n.active_slot = s.slot WHERE n.namespace = $1`,
      [namespace],
    );
    if (rows.length === 0) return new Map<string, string>();
    const data = await pool.query<{ obj_ref: string; content: string }>(
      `SELECT obj_ref, content FROM vec_questions_s${Number(rows[0].id)}`,
    );
    return new Map(data.rows.map((row) => [row.obj_ref, row.content]));
  };

  const stagingTables = async () =>
    (
      await pool.query<{ relname: string }>(
        `SELECT relname FROM pg_class WHERE relname ~ '^vec_.*_import[0-9]+$'`,
      )
    ).rows.map((row) => row.relname);

  it('imports 200k lines into an empty namespace through a new slot, indexed once', async () => {
    const namespace = newNamespace();
    const importId = randomUUID();
    const started = Date.now();
    const response = await importBody(namespace, ndjson(200_000), { 'x-import-id': importId });
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({
      success: true,
      import_id: importId,
      namespace,
      table_name: 'questions',
      mode: 'slot',
      lines: 200_000,
      processed: 200_000,
      embedded: 0,
      slot: 2,
      previous_slot: 1,
    });
    const rows = await activeRows(namespace);
    expect(rows.size).toBe(200_000);
    expect(rows.get('imp-123456')).toBe('imported item 123456');
    const progress = await app.http.get(`/api/v1/vector/imports/${importId}`).expect(200);
    expect(progress.body).toMatchObject({
      id: importId,
      status: 'succeeded',
      mode: 'slot',
      lines: 200_000,
      rows: 200_000,
    });
    const latest = await app.http.get(`/api/v1/vector/imports?namespace=${namespace}`).expect(200);
    expect(latest.body.id).toBe(importId);
    const stats = await app.http
      .get(`/api/v1/vector/statistics?namespace=${namespace}&table_name=questions`)
      .expect(200);
    const slots = (
      stats.body as { namespaces: { tables: { questions: { slots: { slot: number }[] } } }[] }
    ).namespaces[0].tables.questions.slots;
    const active = slots.find((slot) => slot.slot === 2);
    expect(active).toMatchObject({ status: 'active', rows: 200_000, index_valid: true });
    // A search finds an imported item by its own vector.
    const search = await app.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, vector: vectorOf(4242), k: 1 })
      .expect(200);
    expect(search.body.results[0].score).toBeGreaterThan(0.999);
    expect(await stagingTables()).toEqual([]);
    console.log(`200k-line import: ${Date.now() - started} ms`);
  }, 90_000);

  it('fails a malformed line in the middle with its number, and writes nothing', async () => {
    const namespace = newNamespace();
    await seed(namespace, 2_000);
    const before = await activeRows(namespace);
    const body = ndjson(60_000, (i) =>
      i === 30_000 ? '{"obj_ref": "broken", "content": ' : lineOf(i, 'seed', `replaced ${i}`),
    );
    const response = await importBody(namespace, body);
    expect(response.status).toBe(400);
    expect(response.headers['content-type']).toContain('application/problem+json');
    expect(response.body).toMatchObject({ status: 400, line: 30_001 });
    expect(response.body.errors[0].field).toBe('lines[30001]');
    expect(await activeRows(namespace)).toEqual(before);
    expect(await stagingTables()).toEqual([]);
    const latest = await app.http.get(`/api/v1/vector/imports?namespace=${namespace}`).expect(200);
    expect(latest.body).toMatchObject({ status: 'failed' });
  }, 60_000);

  it('names the line and field of an invalid item, a wrong dimension and a duplicate obj_ref', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    const cases: [string, number, string][] = [
      [
        ndjson(5, (i) => (i === 3 ? JSON.stringify({ obj_ref: 'x' }) : lineOf(i))),
        4,
        'lines[4].content',
      ],
      [
        ndjson(5, (i) =>
          i === 2 ? JSON.stringify({ obj_ref: 'y', content: 'c', embedding: [1, 2] }) : lineOf(i),
        ),
        3,
        'lines[3].embedding',
      ],
      [ndjson(5, (i) => (i === 4 ? lineOf(1) : lineOf(i))), 5, 'lines[5].obj_ref'],
      [
        ndjson(3, (i) =>
          i === 1 ? JSON.stringify({ ...JSON.parse(lineOf(1)), extra: 1 }) : lineOf(i),
        ),
        2,
        'lines[2].extra',
      ],
      [ndjson(2, (i) => (i === 0 ? '[1, 2]' : lineOf(i))), 1, 'lines[1]'],
    ];
    for (const [body, line, field] of cases) {
      const response = await importBody(namespace, body);
      expect([response.status, response.body.line, response.body.errors?.[0]?.field]).toEqual([
        400,
        line,
        field,
      ]);
    }
    expect((await activeRows(namespace)).size).toBe(10);
    expect(await stagingTables()).toEqual([]);
  });

  it('refuses other content types and an empty body', async () => {
    const namespace = newNamespace();
    await app.http
      .post(`/api/v1/vector/import?table_name=questions&namespace=${namespace}`)
      .send({ items: [] })
      .expect(415);
    const empty = await importBody(namespace, '\n\n');
    expect(empty.status).toBe(400);
    const unknownTable = await app.http
      .post(`/api/v1/vector/import?table_name=nope&namespace=${namespace}`)
      .set('content-type', NDJSON)
      .send(lineOf(1));
    expect(unknownTable.status).toBe(400);
    await app.http.get(`/api/v1/vector/imports/${randomUUID()}`).expect(404);
  });

  it('replays the same Idempotency-Key without importing twice', async () => {
    const namespace = newNamespace();
    await seed(namespace, 3_000);
    const body = ndjson(1_000, (i) => lineOf(i, 'seed', `once ${i}`));
    const key = `import-${randomBytes(6).toString('hex')}`;
    const first = await importBody(namespace, body, { 'idempotency-key': key });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ mode: 'merge', processed: 1_000, slot: 1 });
    // Rows changed after the import: a replay must not write the import's rows again.
    await upsert(namespace, [
      { obj_ref: 'seed-5', content: 'after', embedding: vectorOf(5) },
    ]).expect(200);
    const replay = await importBody(namespace, body, { 'idempotency-key': key });
    expect(replay.status).toBe(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(first.body);
    const rows = await activeRows(namespace);
    expect(rows.get('seed-5')).toBe('after');
    expect(rows.get('seed-6')).toBe('once 6');
    const { rows: imports } = await pool.query(
      'SELECT id FROM vector_imports WHERE namespace = $1',
      [namespace],
    );
    expect(imports).toHaveLength(1);
    // The same key with another query is another request: 422.
    const other = await app.http
      .post(`/api/v1/vector/import?table_name=questions&namespace=${newNamespace()}`)
      .set({ 'content-type': NDJSON, 'idempotency-key': key })
      .send(body);
    expect(other.status).toBe(422);
  });

  /** Upserts new items (live-*) in a loop until stopped; what was acknowledged, by obj_ref. */
  const startWriter = (namespace: string) => {
    const acknowledged = new Map<string, string>();
    const ackTimes: number[] = [];
    const failures: number[] = [];
    let stop = false;
    let round = 0;
    const done = (async () => {
      while (!stop) {
        round++;
        const items = Array.from({ length: 5 }, (_, i) => ({
          obj_ref: `live-${round}-${i}`,
          content: `live ${round} ${i}`,
          embedding: vectorOf(round * 5 + i),
        }));
        const response = await upsert(namespace, items);
        if (response.status === 200) {
          for (const item of items) acknowledged.set(item.obj_ref, item.content);
          ackTimes.push(Date.now());
        } else {
          failures.push(response.status);
        }
      }
    })();
    return {
      acknowledged,
      ackTimes,
      failures,
      stop: async () => {
        stop = true;
        await done;
      },
    };
  };

  it.each([
    ['merge', 3_000, 1_000],
    ['slot', 100, 5_000],
  ])(
    'keeps every upsert acknowledged while an import (%s) runs',
    async (mode, seeded, imported) => {
      const namespace = newNamespace();
      await seed(namespace, seeded);
      const writer = startWriter(namespace);
      await waitFor(() => writer.acknowledged.size >= 15);
      const sizeBefore = writer.acknowledged.size;
      const importStarted = Date.now();
      const response = await importBody(namespace, ndjson(imported));
      const importEnded = Date.now();
      await waitFor(() => writer.acknowledged.size >= sizeBefore + 30);
      await writer.stop();
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({ mode, processed: imported });
      expect(writer.failures).toEqual([]);
      // Upserts went on while the import ran (they wait for its merge, never fail).
      expect(
        writer.ackTimes.filter((t) => t > importStarted && t < importEnded).length,
      ).toBeGreaterThan(0);
      const rows = await activeRows(namespace);
      for (const [objRef, content] of writer.acknowledged) {
        expect([objRef, rows.get(objRef)]).toEqual([objRef, content]);
      }
      for (let i = 0; i < imported; i++) expect(rows.get(`imp-${i}`)).toBe(`imported item ${i}`);
      expect(rows.size).toBe(seeded + imported + writer.acknowledged.size);
    },
    60_000,
  );

  it('reaches the new slot of a rebuild that runs while it merges', async () => {
    const namespace = newNamespace();
    await seed(namespace, 12_000);
    const rebuild = app.http
      .post('/api/v1/vector/rebuild-index')
      .send({ namespace, force: true })
      .then((response) => ({ response, at: Date.now() }));
    await waitFor(async () => {
      const { rows } = await pool.query(
        'SELECT building_slot FROM vector_namespaces WHERE namespace = $1',
        [namespace],
      );
      return rows[0]?.building_slot !== null;
    });
    const imported = await importBody(
      namespace,
      ndjson(2_000, (i) => lineOf(i, 'seed', `new ${i}`)),
    );
    const importedAt = Date.now();
    const rebuilt = await rebuild;
    expect(imported.status).toBe(200);
    expect(imported.body).toMatchObject({ mode: 'merge', slot: 1 });
    expect(rebuilt.response.status).toBe(200);
    expect(rebuilt.response.body).toMatchObject({ slot: 2, previous_slot: 1 });
    // The import answered while the rebuild was still running: its rows reached slot 2 through
    // the rebuild's building slot (or its side table), not after the switch.
    expect(importedAt).toBeLessThan(rebuilt.at);
    const rows = await activeRows(namespace);
    expect(rows.size).toBe(12_000);
    for (let i = 0; i < 2_000; i++) expect(rows.get(`seed-${i}`)).toBe(`new ${i}`);
    expect(rows.get('seed-2000')).toBe('seed 2000');
  }, 60_000);

  it('documents its routes in the OpenAPI document', async () => {
    const document = (await app.http.get('/api/docs-json').expect(200)).body as {
      paths: Record<
        string,
        Record<
          string,
          {
            summary: string;
            security: unknown[];
            requestBody?: { content: Record<string, unknown> };
            responses: Record<string, unknown>;
            parameters?: { name: string; in: string }[];
          }
        >
      >;
    };
    const post = document.paths['/api/v1/vector/import'].post;
    expect(post.summary).toContain('scope: write');
    expect(Object.keys(post.requestBody!.content)).toEqual([NDJSON]);
    expect(post.security).toEqual(expect.arrayContaining([{ bearer: [] }, { 'api-key': [] }]));
    for (const status of ['200', '400', '401', '403', '409', '413', '415', '422']) {
      expect(Object.keys(post.responses)).toContain(status);
    }
    // (The query DTO's fields are described by the Nest CLI plugin, in the built service only.)
    expect(
      post
        .parameters!.filter((p) => p.in === 'header')
        .map((p) => p.name)
        .sort(),
    ).toEqual(['Idempotency-Key', 'x-import-id']);
    expect(document.paths['/api/v1/vector/imports/{id}'].get.summary).toContain('scope: read');
    expect(document.paths['/api/v1/vector/imports'].get.responses).toHaveProperty('404');
  });
});
