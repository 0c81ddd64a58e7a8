import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { LockService } from '../../src/lock';
import { VectorItemRepository } from '../../src/vector/repositories/vector-item.repository';
import { TestApp, startTestApp } from '../support/app';
import { waitFor } from '../support/wait';

describe('Vector slots: rebuild, fencing, cleanup, rollback', () => {
  let app: TestApp;
  let pool: Pool;

  beforeAll(async () => {
    // ef_search 40 (pgvector's default): with 100 the planner prefers an exact scan for a
    // partition as small as this test's; large slots use the index either way.
    app = await startTestApp({ LOG_LEVEL: 'error', SEARCH_EF_SEARCH: '40' });
    pool = app.app.get<Pool>(PG_POOL);
  });

  afterAll(async () => {
    await app.close();
  });

  const newNamespace = () => `rb-${randomBytes(4).toString('hex')}`;

  const upsert = (namespace: string, items: object[], table = 'questions') =>
    app.http.post('/api/v1/vector/batch-upsert').send({ items, table_name: table, namespace });

  const seed = async (namespace: string, count: number) => {
    for (let start = 0; start < count; start += 500) {
      const items = Array.from({ length: Math.min(500, count - start) }, (_, i) => ({
        obj_ref: `seed-${start + i}`,
        content: `seed item number ${start + i} about topic ${(start + i) % 37}`,
      }));
      await upsert(namespace, items).expect(200);
    }
  };

  const slotRows = async (namespace: string, slot: number, table = 'questions') => {
    const { rows } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_slots WHERE namespace = $1 AND slot = $2',
      [namespace, slot],
    );
    const data = await pool.query<{ obj_ref: string; content: string }>(
      `SELECT obj_ref, content FROM vec_${table}_s${Number(rows[0].id)}`,
    );
    return new Map(data.rows.map((row) => [row.obj_ref, row.content]));
  };

  it('loses no acknowledged upsert made while a rebuild runs, and never blocks upserts for its length', async () => {
    const namespace = newNamespace();
    await seed(namespace, 3_000);
    const acknowledged = new Map<string, string>();
    const ackTimes: number[] = [];
    const failures: number[] = [];
    let stop = false;
    let round = 0;
    const writer = (async () => {
      while (!stop) {
        round++;
        const items = [
          // New items and changes to seeded ones, in every batch.
          ...Array.from({ length: 5 }, (_, i) => ({
            obj_ref: `live-${round}-${i}`,
            content: `live ${round} ${i}`,
          })),
          ...Array.from({ length: 5 }, (_, i) => ({
            obj_ref: `seed-${(round * 7 + i * 13) % 3_000}`,
            content: `changed in round ${round} (${i})`,
          })),
        ];
        const response = await upsert(namespace, items);
        if (response.status === 200) {
          for (const item of items) acknowledged.set(item.obj_ref, item.content);
          ackTimes.push(Date.now());
        } else {
          failures.push(response.status);
        }
      }
    })();
    await waitFor(() => ackTimes.length >= 3);
    const rebuildStarted = Date.now();
    const rebuild = await app.http
      .post('/api/v1/vector/rebuild-index')
      .send({ namespace, force: true })
      .expect(200);
    const rebuildEnded = Date.now();
    // A few more writes after the switch, then stop.
    const acksAtSwitch = ackTimes.length;
    await waitFor(() => ackTimes.length >= acksAtSwitch + 3);
    stop = true;
    await writer;

    expect(failures).toEqual([]);
    expect(rebuild.body).toMatchObject({ success: true, slot: 2, previous_slot: 1 });
    const during = ackTimes.filter((t) => t > rebuildStarted && t < rebuildEnded).length;
    expect(during).toBeGreaterThan(0);

    const active = await slotRows(namespace, 2);
    for (const [objRef, content] of acknowledged)
      expect([objRef, active.get(objRef)]).toEqual([objRef, content]);
    expect(active.size).toBe(
      3_000 + [...acknowledged.keys()].filter((k) => k.startsWith('live-')).length,
    );
  });

  it('searches the new active slot once the slot it had prepared its statement for is dropped', async () => {
    const namespace = newNamespace();
    await seed(namespace, 20);
    const search = () =>
      app.http
        .post('/api/v1/vector/search')
        .send({ table_name: 'questions', namespace, query: 'seed item number 3', k: 3 });
    // Prepares the slot-1 statement on several pooled connections.
    for (const res of await Promise.all(Array.from({ length: 6 }, search))) {
      expect(res.body).toMatchObject({ slot: 1 });
    }
    const slot1 = Number(
      (
        await pool.query<{ id: string }>(
          'SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1',
          [namespace],
        )
      ).rows[0].id,
    );
    await app.http.post('/api/v1/vector/rebuild-index').send({ namespace }).expect(200);
    await app.http
      .post('/api/v1/vector/cleanup-slots')
      .send({ namespace, keep_previous: false })
      .expect(200);

    // The prepared statement of the dropped slot fails as its table does, the error the
    // service's retry looks for...
    const items = app.app.get(VectorItemRepository);
    await expect(
      items.search(
        'questions',
        { id: slot1, slot: 1, namespace, dimension: 384 },
        Array.from({ length: 384 }, () => 0.05),
        3,
        40,
        40,
      ),
    ).rejects.toMatchObject({ code: '42P01' });
    // ...so searches that still had slot 1 cached find slot 2.
    for (const res of await Promise.all(Array.from({ length: 6 }, search))) {
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ slot: 2 });
      expect(res.body.results).toHaveLength(3);
    }
  });

  it('searches through the active slot partition HNSW index', async () => {
    const namespace = newNamespace();
    // Large enough that the planner prefers the index to an exact scan (tiny slots scan).
    await seed(namespace, 3_000);
    const { rows } = await pool.query<{ id: string }>(
      `SELECT id FROM vector_slots WHERE namespace = $1 AND status = 'active'`,
      [namespace],
    );
    const slotId = Number(rows[0].id);
    await pool.query(`ANALYZE vec_questions_s${slotId}`);
    const plan = await app.app.get(VectorItemRepository).explainSearch(
      'questions',
      { id: slotId, slot: 1, namespace, dimension: 384 },
      Array.from({ length: 384 }, (_, i) => (i % 7) + 1),
    );
    expect(plan).toContain(`Index Scan using vec_questions_s${slotId}_hnsw`);

    const search = await app.http
      .post('/api/v1/vector/search')
      .send({
        table_name: 'questions',
        namespace,
        query: 'seed item number 42 about topic 5',
        k: 5,
      })
      .expect(200);
    expect(search.body.results).toHaveLength(5);
    expect(search.body.results[0]).toMatchObject({ obj_ref: 'seed-42', id: null });
    expect(search.body.results[0].score).toBeGreaterThan(0.99);
    // k above SEARCH_EF_SEARCH raises ef_search for that query: k results come back.
    const wide = await app.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, query: 'seed item', k: 300 })
      .expect(200);
    expect(wide.body.results).toHaveLength(300);
    const { rows: setting } = await pool.query<{ ef: string }>(
      "SELECT current_setting('hnsw.ef_search') AS ef",
    );
    expect(setting[0].ef).toBe('40');
  });

  it('rejects and rolls back a write whose lock was force-released and re-taken meanwhile', async () => {
    const namespace = newNamespace();
    await seed(namespace, 10);
    const locks = app.app.get(LockService);
    const key = `lock:vector:upsert:questions:${namespace}`;
    // Hold the namespace row so the next upsert stops inside its transaction, lock held.
    const blocker = await pool.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('SELECT 1 FROM vector_namespaces WHERE namespace = $1 FOR UPDATE', [
        namespace,
      ]);
      const stale = upsert(namespace, [
        { obj_ref: 'stale', content: 'from the evicted holder' },
      ]).then((r) => r);
      const evicted = await waitFor(async () => {
        const status = await locks.status(key);
        return status.locked ? status : undefined;
      });
      await locks.forceRelease(key, { by: 'test' });
      const fresh = upsert(namespace, [{ obj_ref: 'fresh', content: 'from the new holder' }]).then(
        (r) => r,
      );
      await waitFor(async () => (await locks.status(key)).fence === evicted.fence + 2);
      await blocker.query('COMMIT');
      const [staleResponse, freshResponse] = await Promise.all([stale, fresh]);
      expect(staleResponse.status).toBe(409);
      expect(staleResponse.headers['content-type']).toContain('application/problem+json');
      expect(freshResponse.status).toBe(200);
    } finally {
      blocker.release();
    }
    const rows = await slotRows(namespace, 1);
    expect(rows.has('stale')).toBe(false);
    expect(rows.get('fresh')).toBe('from the new holder');
  });

  it('cleans up old slots, keeps the previous one for rollback, and rolls back without losing upserts', async () => {
    const namespace = newNamespace();
    await seed(namespace, 50);
    await upsert(namespace, [{ obj_ref: 'p1', content: 'a pattern' }], 'patterns').expect(200);
    await app.http.post('/api/v1/vector/rebuild-index').send({ namespace }).expect(200);
    const second = await app.http
      .post('/api/v1/vector/rebuild-index')
      .send({ namespace, force: true })
      .expect(200);
    expect(second.body).toMatchObject({
      slot: 3,
      previous_slot: 2,
      questions_updated: 50,
      patterns_updated: 1,
    });

    const progress = await app.http.get(`/api/v1/vector/rebuilds/${namespace}`).expect(200);
    expect(progress.body).toMatchObject({ status: 'succeeded', slot: 3, processed: 51, total: 51 });

    const cleanup = await app.http
      .post('/api/v1/vector/cleanup-slots')
      .send({ namespace })
      .expect(200);
    expect(cleanup.body).toEqual({
      success: true,
      namespace,
      active_slot: 3,
      kept_previous_slot: 2,
      dropped_slots: [1],
      busy_slots: [],
    });
    const stats = await app.http
      .get(`/api/v1/vector/statistics?namespace=${namespace}`)
      .expect(200);
    expect(stats.body.namespaces[0]).toMatchObject({
      active_slot: 3,
      previous_slot: 2,
      building_slot: null,
      dimension: 384,
    });
    expect(stats.body.namespaces[0].tables.questions.slots).toEqual([
      expect.objectContaining({
        slot: 2,
        status: 'retired',
        rows: 50,
        index_present: true,
        index_valid: true,
      }),
      expect.objectContaining({
        slot: 3,
        status: 'active',
        rows: 50,
        index_present: true,
        index_valid: true,
      }),
    ]);

    // Written to slot 3 after its switch: must survive the rollback to slot 2.
    await upsert(namespace, [{ obj_ref: 'after-switch', content: 'late item' }]).expect(200);
    const rollback = await app.http.post('/api/v1/vector/rollback').send({ namespace }).expect(200);
    expect(rollback.body).toMatchObject({ success: true, active_slot: 2, previous_slot: 3 });
    expect((await slotRows(namespace, 2)).get('after-switch')).toBe('late item');
    const search = await app.http
      .post('/api/v1/vector/search')
      .send({ table_name: 'questions', namespace, query: 'late item', k: 1 })
      .expect(200);
    expect(search.body).toMatchObject({ slot: 2, results: [{ obj_ref: 'after-switch' }] });

    const drop = await app.http
      .post('/api/v1/vector/cleanup-slots')
      .send({ namespace, keep_previous: false })
      .expect(200);
    expect(drop.body.dropped_slots).toEqual([3]);
    await app.http.post('/api/v1/vector/rollback').send({ namespace }).expect(409);
  });
});
