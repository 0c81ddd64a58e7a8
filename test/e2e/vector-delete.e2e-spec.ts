import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { FakeEmbeddingsServer } from '../support/fake-embeddings-server';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { TestApp, startTestApp } from '../support/app';
import { waitFor } from '../support/wait';

/**
 * Deletes, and dropping a namespace. The point of these tests is that a deleted item stays
 * deleted: a rebuild that copied it before the delete, or a rollback to a slot that still held
 * it, must not bring it back. Rebuilds are held at known points by an embeddings server that
 * answers only when told to, or by a lock on the new slot's table during its index build.
 */
describe('Deleting items and namespaces', () => {
  const DIMENSION = 8;
  let database: FreshDatabase;
  let pool: Pool;
  let embeddings: FakeEmbeddingsServer;
  /** Model m1: writes the namespaces. */
  let writer: TestApp;
  /** Model m2: its rebuilds re-embed every provider-made item, through the fake server. */
  let rebuilder: TestApp;

  const env = (model: string) => ({
    DATABASE_URL: database.url,
    EMBEDDING_PROVIDER: 'openai',
    EMBEDDING_API_URL: embeddings.url,
    EMBEDDING_MODEL: model,
    EMBEDDING_DIMENSION: String(DIMENSION),
    EMBEDDING_MAX_RETRIES: '0',
  });

  beforeAll(async () => {
    database = await createFreshDatabase('vector_delete');
    pool = new Pool({ connectionString: database.url, max: 4 });
    embeddings = await FakeEmbeddingsServer.start(DIMENSION);
    // A drop refused while a rebuild holds the lock answers after this wait.
    writer = await startTestApp({ ...env('m1'), DEFAULT_WAIT_TIMEOUT_MS: '2000' });
    rebuilder = await startTestApp(env('m2'));
  });

  afterAll(async () => {
    await Promise.all([writer?.close(), rebuilder?.close()]);
    await pool?.end();
    await embeddings?.close();
    await database?.drop();
  });

  const newNamespace = () => `del-${randomBytes(4).toString('hex')}`;

  const clientVector = (seed: number) =>
    Array.from({ length: DIMENSION }, (_, i) => ((seed * 31 + i * 7) % 13) + 1);

  function upsert(app: TestApp, namespace: string, items: object[]) {
    return app.http
      .post('/api/v1/vector/batch-upsert')
      .send({ table_name: 'questions', namespace, items });
  }

  function remove(app: TestApp, namespace: string, objRefs: string[]) {
    return app.http
      .post('/api/v1/vector/batch-delete')
      .send({ table_name: 'questions', namespace, obj_refs: objRefs });
  }

  async function seed(namespace: string, count: number) {
    const items = Array.from({ length: count }, (_, i) => ({
      obj_ref: `seed-${i}`,
      content: `seed item ${i}`,
    }));
    await upsert(writer, namespace, items).expect(200);
  }

  function holdNextEmbedding(): () => void {
    let release!: () => void;
    embeddings.answer({ kind: 'wait', until: new Promise<void>((resolve) => (release = resolve)) });
    return release;
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

  async function buildingTable(namespace: string): Promise<string> {
    const { rows } = await pool.query<{ id: string }>(
      `SELECT s.id FROM vector_namespaces n
       JOIN vector_slots s ON s.namespace = n.namespace AND s.slot = n.building_slot
       WHERE n.namespace = $1`,
      [namespace],
    );
    return `vec_questions_s${Number(rows[0].id)}`;
  }

  const recordedDeletions = async (namespace: string) =>
    Number(
      (
        await pool.query<{ count: string }>(
          `SELECT count(*) FROM vector_deletions d
           WHERE d.slot_id IN (SELECT id FROM vector_slots WHERE namespace = $1)`,
          [namespace],
        )
      ).rows[0].count,
    );

  /** Starts a rebuild on the m2 replica and waits until it is re-embedding (held). */
  async function heldRebuild(namespace: string) {
    const release = holdNextEmbedding();
    const before = embeddings.requests.length;
    const answer = rebuilder.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .then((res) => res);
    await waitFor(() => embeddings.requests.length > before, { what: 'the rebuild re-embedding' });
    return { release, answer };
  }

  it('deletes by obj_ref, says which were not there, and searches no longer find them', async () => {
    const namespace = newNamespace();
    await seed(namespace, 5);
    const res = await remove(writer, namespace, ['seed-1', 'seed-2', 'never-there']).expect(200);
    expect(res.body).toEqual({
      success: true,
      namespace,
      deleted: 2,
      not_found: ['never-there'],
    });
    const items = await activeItems(namespace);
    expect([...items.keys()].sort()).toEqual(['seed-0', 'seed-3', 'seed-4']);
    const search = await writer.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, query: 'seed item 1', k: 10 })
      .expect(200);
    const found = (search.body.results as { obj_ref: string }[]).map((hit) => hit.obj_ref);
    expect(found.sort()).toEqual(['seed-0', 'seed-3', 'seed-4']);
    // Deleting again is harmless: nothing there.
    await remove(writer, namespace, ['seed-1'])
      .expect(200)
      .expect((again) => expect(again.body).toMatchObject({ deleted: 0, not_found: ['seed-1'] }));
    // No previous slot: nothing is kept for a rollback.
    expect(await recordedDeletions(namespace)).toBe(0);
  });

  it('refuses bad batches whole with problem details, and never creates a namespace', async () => {
    const namespace = newNamespace();
    await seed(namespace, 3);
    const cases: [object, string][] = [
      [{ table_name: 'questions', namespace, obj_refs: [] }, 'obj_refs'],
      [
        {
          table_name: 'questions',
          namespace,
          obj_refs: Array.from({ length: 1001 }, (_, i) => `r${i}`),
        },
        'obj_refs',
      ],
      [{ table_name: 'questions', namespace, obj_refs: ['seed-0', 'seed-0'] }, 'obj_refs[1]'],
      [{ table_name: 'questions', namespace, obj_refs: [''] }, 'obj_refs'],
      [{ table_name: 'questions', namespace, obj_refs: [7] }, 'obj_refs'],
      [{ table_name: 'nope', namespace, obj_refs: ['seed-0'] }, 'table_name'],
      [{ table_name: 'questions', namespace: 'Bad NS', obj_refs: ['seed-0'] }, 'namespace'],
    ];
    for (const [body, field] of cases) {
      const res = await writer.http.post('/api/v1/vector/batch-delete').send(body).expect(400);
      expect(res.headers['content-type']).toContain('application/problem+json');
      expect((res.body.errors as { field: string }[]).map((e) => e.field)).toContain(field);
    }
    expect((await activeItems(namespace)).size).toBe(3);

    const missing = newNamespace();
    const res = await remove(writer, missing, ['x']).expect(404);
    expect(res.headers['content-type']).toContain('application/problem+json');
    const { rowCount } = await pool.query('SELECT 1 FROM vector_namespaces WHERE namespace = $1', [
      missing,
    ]);
    expect(rowCount).toBe(0);
  });

  it('an item deleted while a rebuild re-embeds it does not come back at the switch', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    const rebuild = await heldRebuild(namespace);
    // The rebuild has read its page (seed-3 included) and waits for its embeddings.
    await remove(writer, namespace, ['seed-3'])
      .expect(200)
      .expect((res) => expect(res.body.deleted).toBe(1));
    // Deleted, then written again: the later write wins.
    await remove(writer, namespace, ['seed-5']).expect(200);
    await upsert(writer, namespace, [
      { obj_ref: 'seed-5', content: 'seed 5 again', embedding: clientVector(5) },
    ]).expect(200);
    rebuild.release();
    expect((await rebuild.answer).status).toBe(200);
    const items = await activeItems(namespace);
    expect(items.has('seed-3')).toBe(false);
    expect(items.get('seed-5')).toBe('seed 5 again');
    expect(items.size).toBe(9);
    // Applied at the switch, then forgotten.
    expect(await recordedDeletions(namespace)).toBe(0);
  });

  it('an item deleted during the index build of a rebuild does not come back at the switch', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    const rebuild = await heldRebuild(namespace);
    const target = await buildingTable(namespace);
    // A reader of the new slot's table holds up its index build (which locks out writers).
    const reader = await pool.connect();
    try {
      await reader.query('BEGIN');
      await reader.query(`LOCK TABLE ${target} IN ROW EXCLUSIVE MODE`);
      rebuild.release();
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
      // Answered at once, though the new slot's table cannot be written now.
      await remove(writer, namespace, ['seed-4']).expect(200);
      await upsert(writer, namespace, [
        { obj_ref: 'brief', content: 'written then deleted', embedding: clientVector(1) },
        { obj_ref: 'seed-6', content: 'seed 6 changed', embedding: clientVector(6) },
      ]).expect(200);
      await remove(writer, namespace, ['brief']).expect(200);
      await reader.query('COMMIT');
    } finally {
      reader.release();
    }
    expect((await rebuild.answer).status).toBe(200);
    const items = await activeItems(namespace);
    expect(items.has('seed-4')).toBe(false);
    expect(items.has('brief')).toBe(false);
    expect(items.get('seed-6')).toBe('seed 6 changed');
    expect(items.size).toBe(9);
  });

  it('a rollback does not bring back items deleted since the switch', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    // Same model: the previous slot can be rolled back to.
    await writer.http.post('/api/v1/vector/rebuild-index').send({ namespace }).expect(200);
    await remove(writer, namespace, ['seed-2']).expect(200);
    await upsert(writer, namespace, [
      { obj_ref: 'late', content: 'written after the switch' },
      { obj_ref: 'seed-6', content: 'seed 6 after the switch' },
    ]).expect(200);
    await remove(writer, namespace, ['late', 'seed-6']).expect(200);
    await upsert(writer, namespace, [{ obj_ref: 'seed-6', content: 'seed 6 once more' }]).expect(
      200,
    );
    expect(await recordedDeletions(namespace)).toBe(3);

    const rollback = await writer.http
      .post('/api/v1/vector/rollback')
      .send({ namespace })
      .expect(200);
    expect(rollback.body).toMatchObject({ active_slot: 1, previous_slot: 2, deletions_applied: 1 });
    const items = await activeItems(namespace);
    expect(items.has('seed-2')).toBe(false);
    expect(items.has('late')).toBe(false);
    expect(items.get('seed-6')).toBe('seed 6 once more');
    expect(items.size).toBe(9);
    expect(await recordedDeletions(namespace)).toBe(0);
  });

  it('under continuous upserts and deletes, a rebuild, a second rebuild and a rollback keep exactly the acknowledged state', async () => {
    const namespace = newNamespace();
    const WRITERS = 4;
    const KEYS_PER_WRITER = 20;
    // Provider-made at first: the m2 rebuild re-embeds these through the staging path, while
    // the client vectors written below are copied server-side.
    await upsert(
      writer,
      namespace,
      Array.from({ length: WRITERS * KEYS_PER_WRITER }, (_, i) => ({
        obj_ref: `k-${i}`,
        content: `initial ${i}`,
      })),
    ).expect(200);
    const ledger = new KeyLedger();
    for (let i = 0; i < WRITERS * KEYS_PER_WRITER; i++) ledger.seeded(`k-${i}`, `initial ${i}`);

    let running = true;
    let sequence = 0;
    /** Each writer owns its keys and writes them one request at a time. */
    const load = Array.from({ length: WRITERS }, async (_, w) => {
      while (running) {
        const key = `k-${w * KEYS_PER_WRITER + Math.floor(Math.random() * KEYS_PER_WRITER)}`;
        const n = ++sequence;
        if (Math.random() < 0.5) {
          const content = `v${n} of ${key}`;
          const settle = ledger.send(key, { kind: 'upsert', content });
          const res = await upsert(writer, namespace, [
            { obj_ref: key, content, embedding: clientVector(n) },
          ]).catch(() => ({ status: 0 }));
          settle(res.status);
        } else {
          const settle = ledger.send(key, { kind: 'delete' });
          const res = await remove(writer, namespace, [key]).catch(() => ({ status: 0 }));
          settle(res.status);
        }
      }
    });
    const opsSoFar = () => sequence;
    try {
      await waitFor(() => opsSoFar() > 40, { what: 'writes before the rebuild' });
      // Re-embeds through the staging path, writes racing its copy and its index build.
      await rebuilder.http
        .post('/api/v1/vector/admin/rebuild-index-manual')
        .send({ namespace })
        .expect(200);
      // Same model: everything copied server-side; and then rolled back.
      await rebuilder.http
        .post('/api/v1/vector/admin/rebuild-index-manual')
        .send({ namespace })
        .expect(200);
      const mark = opsSoFar();
      await waitFor(() => opsSoFar() > mark + 40, { what: 'writes between rebuild and rollback' });
      await writer.http.post('/api/v1/vector/rollback').send({ namespace }).expect(200);
      const after = opsSoFar();
      await waitFor(() => opsSoFar() > after + 40, { what: 'writes after the rollback' });
    } finally {
      running = false;
      await Promise.all(load);
    }

    const items = await activeItems(namespace);
    const { checked, failures } = ledger.check(items);
    expect(failures).toEqual([]);
    expect(checked).toBe(WRITERS * KEYS_PER_WRITER);
    expect(ledger.deletesAcknowledged).toBeGreaterThan(20);
  });

  it('drops a namespace with all its slots, tables and records', async () => {
    const namespace = newNamespace();
    await seed(namespace, 4);
    await writer.http.post('/api/v1/vector/rebuild-index').send({ namespace }).expect(200);
    await remove(writer, namespace, ['seed-0']).expect(200);
    const { rows: slots } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_slots WHERE namespace = $1',
      [namespace],
    );
    expect(slots).toHaveLength(2);

    const key = `drop-${namespace}`;
    const res = await writer.http
      .delete(`/api/v1/vector/namespaces/${namespace}`)
      .set('Idempotency-Key', key)
      .expect(200);
    expect(res.body).toEqual({ success: true, namespace, dropped_slots: [1, 2] });
    // A retry with the same key gets the same answer, not a 404.
    const replay = await writer.http
      .delete(`/api/v1/vector/namespaces/${namespace}`)
      .set('Idempotency-Key', key)
      .expect(200);
    expect(replay.body).toEqual(res.body);
    for (const slot of slots) {
      const { rowCount } = await pool.query(
        `SELECT 1 FROM pg_class WHERE relname LIKE $1 AND relnamespace = 'public'::regnamespace`,
        [`vec\\_%\\_s${Number(slot.id)}%`],
      );
      expect(rowCount).toBe(0);
    }
    for (const catalog of ['vector_namespaces', 'vector_rebuilds', 'vector_slots']) {
      const { rowCount } = await pool.query(`SELECT 1 FROM ${catalog} WHERE namespace = $1`, [
        namespace,
      ]);
      expect(rowCount).toBe(0);
    }
    expect(
      (
        await pool.query('SELECT 1 FROM vector_deletions WHERE slot_id = ANY($1::bigint[])', [
          slots.map((slot) => slot.id),
        ])
      ).rowCount,
    ).toBe(0);
    await writer.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, query: 'seed item 1' })
      .expect(404);
    await writer.http.delete(`/api/v1/vector/namespaces/${namespace}`).expect(404);
    // A later upsert starts the namespace afresh.
    await upsert(writer, namespace, [{ obj_ref: 'fresh', content: 'fresh start' }]).expect(200);
    expect([...(await activeItems(namespace)).keys()]).toEqual(['fresh']);
    // A rebuild of the new namespace runs: the dropped one's result is not replayed.
    const rebuild = await writer.http
      .post('/api/v1/vector/rebuild-index')
      .send({ namespace })
      .expect(200);
    expect(rebuild.body).toMatchObject({ total_processed: 1, previous_slot: 1 });
  });

  it('dropping a namespace waits for its rebuild lock and leaves a running rebuild whole', async () => {
    const namespace = newNamespace();
    await seed(namespace, 5);
    const rebuild = await heldRebuild(namespace);
    const drop = await writer.http.delete(`/api/v1/vector/namespaces/${namespace}`);
    expect(drop.status).toBe(409);
    expect(drop.headers['content-type']).toContain('application/problem+json');
    rebuild.release();
    expect((await rebuild.answer).status).toBe(200);
    expect((await activeItems(namespace)).size).toBe(5);
    await writer.http.delete(`/api/v1/vector/namespaces/${namespace}`).expect(200);
  });
});

type Op = { kind: 'upsert'; content: string } | { kind: 'delete' };
type Outcome = 'acked' | 'refused' | 'unknown';

/**
 * Every write sent per key, in order (each key has one sequential writer). The stored state
 * must be that of the last acknowledged write; a key with a write of unknown outcome (no answer
 * or a 5xx) after it could hold either.
 */
class KeyLedger {
  private readonly writes = new Map<string, { op: Op; outcome: Outcome }[]>();
  deletesAcknowledged = 0;

  seeded(key: string, content: string): void {
    this.writes.set(key, [{ op: { kind: 'upsert', content }, outcome: 'acked' }]);
  }

  send(key: string, op: Op): (status: number) => void {
    const entry = { op, outcome: 'unknown' as Outcome };
    this.writes.get(key)!.push(entry);
    return (status) => {
      entry.outcome =
        status >= 200 && status < 300
          ? 'acked'
          : status >= 400 && status < 500
            ? 'refused'
            : 'unknown';
      if (entry.outcome === 'acked' && op.kind === 'delete') this.deletesAcknowledged++;
    };
  }

  check(items: Map<string, string>): { checked: number; failures: string[] } {
    const failures: string[] = [];
    let checked = 0;
    for (const [key, writes] of this.writes) {
      let last = -1;
      writes.forEach((write, i) => {
        if (write.outcome === 'acked') last = i;
      });
      const allowed = writes
        .filter((write, i) => i === last || (i > last && write.outcome === 'unknown'))
        .map((write) => (write.op.kind === 'delete' ? null : write.op.content));
      const stored = items.get(key) ?? null;
      checked++;
      if (!allowed.includes(stored)) {
        failures.push(
          `${key}: holds ${String(stored)}, expected one of ${JSON.stringify(allowed)}`,
        );
      }
    }
    return { checked, failures };
  }
}
