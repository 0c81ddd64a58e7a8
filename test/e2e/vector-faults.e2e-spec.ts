import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { NamespaceRepository } from '../../src/vector/repositories/namespace.repository';
import { VectorSchemaRepository } from '../../src/vector/repositories/vector-schema.repository';
import { FakeEmbeddingsServer } from '../support/fake-embeddings-server';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { TestApp, startTestApp } from '../support/app';
import { waitFor } from '../support/wait';

/**
 * Regression tests of issue 17's vector faults, each driven to the exact interleaving that
 * broke: a rebuild is held at a known point by an embeddings server that answers only when told
 * to, and the catalog is checked in Postgres afterwards.
 */
describe('Vector data under lock loss, takeovers, dimension changes and switches', () => {
  const DIMENSION = 8;
  let database: FreshDatabase;
  let pool: Pool;
  let embeddings: FakeEmbeddingsServer;
  let narrowEmbeddings: FakeEmbeddingsServer;
  /** Model m1: writes the namespaces. */
  let writer: TestApp;
  /** Model m2 (same dimension): its rebuilds must re-embed everything, through the fake. */
  let rebuilder: TestApp;
  /** Model m3 with 4 dimensions: its rebuilds change the namespace's dimension. */
  let narrower: TestApp;

  const env = (url: string, model: string, dimension: number) => ({
    DATABASE_URL: database.url,
    EMBEDDING_PROVIDER: 'openai',
    EMBEDDING_API_URL: url,
    EMBEDDING_MODEL: model,
    EMBEDDING_DIMENSION: String(dimension),
    EMBEDDING_MAX_RETRIES: '0',
  });

  beforeAll(async () => {
    database = await createFreshDatabase('vector_faults');
    pool = new Pool({ connectionString: database.url, max: 4 });
    embeddings = await FakeEmbeddingsServer.start(DIMENSION);
    narrowEmbeddings = await FakeEmbeddingsServer.start(4);
    writer = await startTestApp(env(embeddings.url, 'm1', DIMENSION));
    rebuilder = await startTestApp(env(embeddings.url, 'm2', DIMENSION));
    narrower = await startTestApp(env(narrowEmbeddings.url, 'm3', 4));
  });

  afterAll(async () => {
    await Promise.all([writer?.close(), rebuilder?.close(), narrower?.close()]);
    await pool?.end();
    await embeddings?.close();
    await narrowEmbeddings?.close();
    await database?.drop();
  });

  const newNamespace = () => `vf-${randomBytes(4).toString('hex')}`;

  /** An embedding request answered only when the returned function is called. */
  function holdNextEmbedding(server: FakeEmbeddingsServer): () => void {
    let release!: () => void;
    server.answer({ kind: 'wait', until: new Promise<void>((resolve) => (release = resolve)) });
    return release;
  }

  const clientVector = (seed: number, dimension = DIMENSION) =>
    Array.from({ length: dimension }, (_, i) => ((seed * 31 + i * 7) % 13) + 1);

  function upsert(app: TestApp, namespace: string, items: object[]) {
    return app.http
      .post('/api/v1/vector/batch-upsert')
      .send({ table_name: 'questions', namespace, items });
  }

  async function seed(namespace: string, count: number) {
    const items = Array.from({ length: count }, (_, i) => ({
      obj_ref: `seed-${i}`,
      content: `seed item ${i}`,
    }));
    await upsert(writer, namespace, items).expect(200);
  }

  /** obj_ref -> content of the namespace's active slot, read from Postgres. */
  async function activeItems(namespace: string): Promise<Map<string, string>> {
    const { rows: slots } = await pool.query<{ id: string }>(
      `SELECT s.id FROM vector_namespaces n
       JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.active_slot
       WHERE n.namespace = $1`,
      [namespace],
    );
    expect(slots).toHaveLength(1);
    const { rows } = await pool.query<{ obj_ref: string; content: string }>(
      `SELECT obj_ref, content FROM vec_questions_s${Number(slots[0].id)}`,
    );
    return new Map(rows.map((row) => [row.obj_ref, row.content]));
  }

  const buildingSlot = async (namespace: string) =>
    (
      await pool.query<{ building_slot: number | null }>(
        'SELECT building_slot FROM vector_namespaces WHERE namespace = $1',
        [namespace],
      )
    ).rows[0]?.building_slot ?? null;

  it('a rebuild that lost its lock leaves the next rebuild and every acknowledged write intact', async () => {
    const namespace = newNamespace();
    await seed(namespace, 20);

    // Rebuild A takes its lock, registers its slot, then waits on the embeddings server.
    const releaseA = holdNextEmbedding(embeddings);
    const requestsBefore = embeddings.requests.length;
    const rebuildA = rebuilder.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .then((res) => res);
    await waitFor(() => embeddings.requests.length > requestsBefore, { what: 'rebuild A loading' });
    const slotA = await buildingSlot(namespace);
    expect(slotA).not.toBeNull();

    // Its lock is force-released by an operator; rebuild B starts and waits the same way.
    await writer.http
      .delete(`/api/v1/vector/lock/${encodeURIComponent(`lock:vector:rebuild:${namespace}`)}`)
      .expect(200);
    const releaseB = holdNextEmbedding(embeddings);
    const rebuildB = rebuilder.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .then((res) => res);
    await waitFor(async () => (await buildingSlot(namespace)) !== slotA, {
      what: 'rebuild B registered',
    });
    const slotB = (await buildingSlot(namespace))!;
    // Slot numbers are never reused, even for a slot that was dropped.
    expect(slotB).toBeGreaterThan(slotA!);
    await upsert(writer, namespace, [
      { obj_ref: 'during', content: 'written during B', embedding: clientVector(1) },
    ]).expect(200);

    // A resumes and fails (its fence is stale); only then does B go on.
    releaseA();
    const answerA = await rebuildA;
    expect(answerA.status).toBe(409);
    releaseB();
    const answerB = await rebuildB;
    expect(answerB.status).toBe(200);
    expect(answerB.body).toMatchObject({ slot: slotB, questions_updated: 21 });

    // The namespace is whole and usable: its active slot has its row, every write is there.
    const items = await activeItems(namespace);
    expect(items.size).toBe(21);
    expect(items.get('during')).toBe('written during B');
    await writer.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, vector: clientVector(1), k: 1 })
      .expect(200)
      .expect((res) => expect(res.body.results[0].obj_ref).toBe('during'));
    await upsert(writer, namespace, [
      { obj_ref: 'after', content: 'after', embedding: clientVector(2) },
    ]).expect(200);
    const rollback = await writer.http.post('/api/v1/vector/rollback').send({ namespace });
    // The previous slot has another model (m1 vs m2): refused, not broken.
    expect(rollback.status).toBe(409);
    await rebuilder.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .expect(200);
    expect((await activeItems(namespace)).size).toBe(22);
  });

  it('an upsert that waited for a rebuild to begin also writes the new building slot', async () => {
    const namespace = newNamespace();
    await seed(namespace, 3);
    const namespaces = writer.app.get(NamespaceRepository);
    const schema = writer.app.get(VectorSchemaRepository);
    // A rebuild's beginSlot, done by hand so that an upsert can be made to wait on it: the
    // namespace row FOR UPDATE, a new building slot with its tables and session lock.
    const begin = await pool.connect();
    try {
      await begin.query('BEGIN');
      await namespaces.lockForSwitch(begin, namespace);
      const slot = await namespaces.createSlot(
        begin,
        namespace,
        await namespaces.allocateSlotNumber(begin, namespace),
        'm1',
        DIMENSION,
        'building',
      );
      await namespaces.holdRebuildSession(begin, slot.id);
      await schema.createSlotTables(begin, slot.id, DIMENSION, false);
      await namespaces.setBuilding(begin, namespace, slot.slot);
      const upsertAnswer = upsert(writer, namespace, [
        {
          obj_ref: 'waited',
          content: 'waited for the rebuild to begin',
          embedding: clientVector(4),
        },
      ]).then((res) => res);
      await waitFor(
        async () =>
          (
            await pool.query(
              `SELECT 1 FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND query LIKE '%FOR SHARE OF n%'`,
            )
          ).rowCount! > 0,
        { intervalMs: 10, what: 'the upsert waiting on the namespace row' },
      );
      await begin.query('COMMIT');
      expect((await upsertAnswer).status).toBe(200);
      const { rows } = await pool.query<{ content: string }>(
        `SELECT content FROM vec_questions_s${slot.id} WHERE obj_ref = 'waited'`,
      );
      expect(rows).toEqual([{ content: 'waited for the rebuild to begin' }]);
    } finally {
      begin.release(true);
    }
  });

  it('upserts during the index build of a rebuild go through unblocked and reach the new slot', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    const release = holdNextEmbedding(embeddings);
    const requestsBefore = embeddings.requests.length;
    const rebuild = rebuilder.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .then((res) => res);
    await waitFor(() => embeddings.requests.length > requestsBefore, { what: 'rebuild loading' });
    const { rows } = await pool.query<{ id: string }>(
      `SELECT s.id FROM vector_namespaces n
       JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.building_slot
       WHERE n.namespace = $1`,
      [namespace],
    );
    const target = `vec_questions_s${Number(rows[0].id)}`;
    // A reader of the new slot's table holds up its index build (which locks out writers).
    const reader = await pool.connect();
    try {
      await reader.query('BEGIN');
      await reader.query(`LOCK TABLE ${target} IN ROW EXCLUSIVE MODE`);
      release();
      await waitFor(
        async () =>
          (
            await pool.query(
              `SELECT 1 FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND query LIKE '%CREATE INDEX%'`,
            )
          ).rowCount! > 0,
        { what: 'the index build waiting' },
      );
      // Meanwhile upserts are answered at once: their copy for the new slot waits in its side
      // table, not behind the build.
      const started = performance.now();
      await upsert(writer, namespace, [
        { obj_ref: 'while-indexing', content: 'during the build', embedding: clientVector(5) },
        {
          obj_ref: 'seed-1',
          content: 'seed 1 changed during the build',
          embedding: clientVector(6),
        },
      ]).expect(200);
      expect(performance.now() - started).toBeLessThan(2_000);
      await reader.query('COMMIT');
    } finally {
      reader.release();
    }
    expect((await rebuild).status).toBe(200);
    const items = await activeItems(namespace);
    expect(items.get('while-indexing')).toBe('during the build');
    expect(items.get('seed-1')).toBe('seed 1 changed during the build');
    expect(items.size).toBe(11);
    expect(
      (await pool.query('SELECT to_regclass($1) AS t', [`${target}_delta`])).rows[0].t,
    ).toBeNull();
  });

  it('refuses client vectors of the old dimension once a rebuild to another dimension began, and loses no acknowledged write', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    const release = holdNextEmbedding(narrowEmbeddings);
    const requestsBefore = narrowEmbeddings.requests.length;
    const rebuild = narrower.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .then((res) => res);
    await waitFor(() => narrowEmbeddings.requests.length > requestsBefore, {
      what: 'the narrowing rebuild loading',
    });

    const acknowledged: string[] = [];
    const oldDimension = await upsert(writer, namespace, [
      { obj_ref: 'old-dim', content: 'eight dimensions', embedding: clientVector(3) },
    ]);
    expect(oldDimension.status).toBe(400);
    expect(oldDimension.headers['content-type']).toContain('application/problem+json');
    expect(JSON.stringify(oldDimension.body.errors)).toContain('rebuild');
    // Provider-made items of the old model could not reach the new slot either.
    const oldModel = await upsert(writer, namespace, [{ obj_ref: 'old-model', content: 'm1' }]);
    expect([409, 400]).toContain(oldModel.status);
    // Items without vectors from the replica that runs the new model are fine... once it is
    // active; before, the active slot's model is m1, so they are refused too, never half-made.
    const newModel = await upsert(narrower, namespace, [{ obj_ref: 'new-model', content: 'm3' }]);
    if (newModel.status === 200) acknowledged.push('new-model');
    else expect(newModel.status).toBe(409);

    release();
    expect((await rebuild).status).toBe(200);
    const items = await activeItems(namespace);
    for (const ref of acknowledged) expect(items.has(ref)).toBe(true);
    expect(items.has('old-dim')).toBe(false);
    expect(items.size).toBe(10 + acknowledged.length);
  });

  it('a search on another replica sees an item acknowledged right after a switch', async () => {
    const namespace = newNamespace();
    await seed(namespace, 5);
    const search = (vector: number[]) =>
      rebuilder.http
        .post('/api/v1/vector/search')
        .send({ table_name: 'questions', namespace, vector, k: 1 })
        .expect(200);
    // The searching replica has the current slot in its cache...
    expect((await search(clientVector(9))).body.slot).toBe(1);
    // ...when the other switches to a new one and acknowledges an item there.
    await writer.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .expect(200);
    for (let i = 0; i < 5; i++) {
      const vector = clientVector(100 + i);
      await upsert(writer, namespace, [
        { obj_ref: `fresh-${i}`, content: `fresh ${i}`, embedding: vector },
      ]).expect(200);
      const found = await search(vector);
      expect(found.body.slot).toBe(2);
      expect(found.body.results[0]).toMatchObject({ obj_ref: `fresh-${i}` });
    }
  });

  it('statistics skip a slot that cleanup drops while they read it', async () => {
    const namespace = newNamespace();
    await seed(namespace, 5);
    for (let i = 0; i < 2; i++) {
      await writer.http
        .post('/api/v1/vector/admin/rebuild-index-manual')
        .send({ namespace })
        .expect(200);
    }
    const { rows } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1',
      [namespace],
    );
    const slot1 = `vec_questions_s${Number(rows[0].id)}`;
    // A reader holds slot 1's table: cleanup's drop queues behind it, statistics behind that.
    const reader = await pool.connect();
    try {
      await reader.query('BEGIN');
      await reader.query(`LOCK TABLE ${slot1} IN ACCESS SHARE MODE`);
      const cleanup = writer.http
        .post('/api/v1/vector/cleanup-slots')
        .send({ namespace, keep_previous: true })
        .then((res) => res);
      const waitingOn = (pattern: string) =>
        waitFor(
          async () =>
            (
              await pool.query(
                `SELECT 1 FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
                [pattern],
              )
            ).rowCount! > 0,
          { intervalMs: 10, what: pattern },
        );
      await waitingOn('%DETACH PARTITION%');
      const statistics = writer.http
        .get('/api/v1/vector/statistics')
        .query({ namespace })
        .then((res) => res);
      await waitingOn('%count(*)%');
      await reader.query('COMMIT');
      expect((await cleanup).body).toMatchObject({ dropped_slots: [1] });
      const stats = await statistics;
      expect(stats.status).toBe(200);
      const body = stats.body as {
        namespaces: { tables: { questions: { slots: { slot: number }[] } } }[];
      };
      const listed = body.namespaces[0].tables.questions.slots.map((slot) => slot.slot);
      expect(listed).toEqual([2, 3]);
    } finally {
      reader.release();
    }
  });
});
