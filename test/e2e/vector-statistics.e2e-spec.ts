import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { TestApp, startTestApp } from '../support/app';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { waitFor } from '../support/wait';

interface SlotStats {
  slot: number;
  status: string;
  rows: number;
  size_bytes: number;
  index_present: boolean;
  index_valid: boolean;
}

interface NamespaceStats {
  namespace: string;
  active_slot: number;
  tables: Record<string, { slots: SlotStats[] }>;
}

interface StatisticsPage {
  success: true;
  tables: string[];
  namespaces: NamespaceStats[];
  next_cursor: string | null;
  summary: { namespaces: number; slots: number; rows: number; bytes: number };
}

/** Namespaces created over HTTP for this file; a fresh database holds nothing else. */
const NAMESPACES = 240;
const nameOf = (i: number) => `ns-${String(i).padStart(4, '0')}`;
/** Rows per namespace in `questions`: 1 to 3, so counts differ between namespaces. */
const rowsOf = (i: number) => (i % 3) + 1;

describe('GET /statistics: keyset pages over many namespaces', () => {
  let database: FreshDatabase;
  let app: TestApp;
  let pool: Pool;

  const statistics = (query: Record<string, string | number> = {}) =>
    app.http.get('/api/v1/vector/statistics').query(query);

  const walk = async (query: Record<string, string | number>) => {
    const pages: StatisticsPage[] = [];
    let cursor: string | null = null;
    do {
      const response = await statistics(cursor ? { ...query, cursor } : query).expect(200);
      const page = response.body as StatisticsPage;
      pages.push(page);
      cursor = page.next_cursor;
    } while (cursor !== null && pages.length < 1000);
    return pages;
  };

  const upsert = (namespace: string, count: number, table = 'questions') =>
    app.http
      .post('/api/v1/vector/batch-upsert')
      .send({
        namespace,
        table_name: table,
        items: Array.from({ length: count }, (_, i) => ({
          obj_ref: `r${i}`,
          content: `${namespace} item ${i}`,
        })),
      })
      .expect(200);

  beforeAll(async () => {
    database = await createFreshDatabase('vector_statistics');
    app = await startTestApp({ DATABASE_URL: database.url });
    pool = app.app.get<Pool>(PG_POOL);
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < NAMESPACES; i = next++) await upsert(nameOf(i), rowsOf(i));
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
  }, 180_000);

  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });

  it('pages cover every namespace exactly once, in name order, with exact per-slot numbers', async () => {
    const pages = await walk({ limit: 37 });
    expect(pages.map((page) => page.namespaces.length)).toEqual([
      ...Array.from({ length: Math.floor(NAMESPACES / 37) }, () => 37),
      NAMESPACES % 37,
    ]);
    const listed = pages.flatMap((page) => page.namespaces);
    expect(listed.map((namespace) => namespace.namespace)).toEqual(
      Array.from({ length: NAMESPACES }, (_, i) => nameOf(i)),
    );
    const { rows } = await pool.query<{ namespace: string; id: string }>(
      'SELECT namespace, id FROM vector_slots',
    );
    const slotIds = new Map(rows.map((row) => [row.namespace, Number(row.id)]));
    for (const [i, namespace] of listed.entries()) {
      expect(namespace.tables.questions.slots).toEqual([
        {
          slot: 1,
          status: 'active',
          rows: rowsOf(i),
          size_bytes: expect.any(Number) as unknown,
          index_present: true,
          index_valid: true,
        },
      ]);
      expect(namespace.tables.patterns.slots).toEqual([
        expect.objectContaining({ slot: 1, rows: 0 }) as unknown,
      ]);
    }
    // Sizes are the catalog's, table by table.
    const sample = listed[7];
    const { rows: sizes } = await pool.query<{ bytes: string }>(
      'SELECT pg_total_relation_size($1::regclass) AS bytes',
      [`vec_questions_s${slotIds.get(sample.namespace)}`],
    );
    expect(sample.tables.questions.slots[0].size_bytes).toBe(Number(sizes[0].bytes));
  });

  it('summarises each page with the sums of its per-slot numbers', async () => {
    const pages = await walk({ limit: 100 });
    expect(pages).toHaveLength(Math.ceil(NAMESPACES / 100));
    for (const page of pages) {
      const slots = page.namespaces.flatMap((namespace) =>
        Object.values(namespace.tables).flatMap((table) => table.slots),
      );
      expect(page.summary).toEqual({
        namespaces: page.namespaces.length,
        // One slot per namespace here, listed under both tables.
        slots: page.namespaces.length,
        rows: slots.reduce((sum, slot) => sum + slot.rows, 0),
        bytes: slots.reduce((sum, slot) => sum + slot.size_bytes, 0),
      });
    }
    const total = pages.reduce((sum, page) => sum + page.summary.rows, 0);
    expect(total).toBe(
      Array.from({ length: NAMESPACES }, (_, i) => rowsOf(i)).reduce((a, b) => a + b),
    );
  });

  it('answers 100 namespaces by default, and the last page has no next_cursor', async () => {
    const first = (await statistics().expect(200)).body as StatisticsPage;
    expect(first.namespaces).toHaveLength(100);
    expect(first.next_cursor).toEqual(expect.any(String));
    const all = (await statistics({ limit: 1000 }).expect(200)).body as StatisticsPage;
    expect(all.namespaces).toHaveLength(NAMESPACES);
    expect(all.next_cursor).toBeNull();
  });

  it('refuses cursors it did not hand out and limits outside 1..1000 (400 problem+json)', async () => {
    const forged = [
      'not-a-cursor',
      Buffer.from('{"v":1,"after":"BAD NAME"}').toString('base64url'),
      Buffer.from('{"v":2,"after":"ns-0001"}').toString('base64url'),
      Buffer.from('[1,2]').toString('base64url'),
    ];
    for (const cursor of forged) {
      const response = await statistics({ cursor }).expect(400);
      expect(response.headers['content-type']).toContain('application/problem+json');
      expect(response.body.errors).toEqual([
        { field: 'cursor', message: expect.any(String) as unknown },
      ]);
    }
    for (const limit of ['0', '1001', '-5', '2.5', 'many']) {
      const response = await statistics({ limit }).expect(400);
      expect(response.headers['content-type']).toContain('application/problem+json');
      expect(response.body.errors).toEqual(
        expect.arrayContaining([expect.objectContaining({ field: 'limit' })]),
      );
    }
    expect(
      ((await statistics({ limit: 1 }).expect(200)).body as StatisticsPage).namespaces,
    ).toHaveLength(1);
  });

  it('filters by table and by namespace', async () => {
    const byTable = (await statistics({ table_name: 'patterns', limit: 10 }).expect(200))
      .body as StatisticsPage;
    expect(byTable.tables).toEqual(['patterns']);
    for (const namespace of byTable.namespaces) {
      expect(Object.keys(namespace.tables)).toEqual(['patterns']);
    }
    expect(byTable.summary.rows).toBe(0);

    const one = (await statistics({ namespace: nameOf(5) }).expect(200)).body as StatisticsPage;
    expect(one.namespaces.map((namespace) => namespace.namespace)).toEqual([nameOf(5)]);
    expect(one.next_cursor).toBeNull();
    expect(one.summary).toMatchObject({ namespaces: 1, slots: 1, rows: rowsOf(5) });

    await statistics({ namespace: 'no-such-namespace' }).expect(404);
    await statistics({ table_name: 'unregistered' }).expect(400);
  });

  it('counts a slot table that is not attached (as a rebuild loads it) on its own', async () => {
    const namespace = nameOf(20);
    await upsert(namespace, 5);
    await app.http
      .post('/api/v1/vector/admin/rebuild-index-manual')
      .send({ namespace })
      .expect(200);
    const { rows } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1',
      [namespace],
    );
    const slot1 = `vec_questions_s${Number(rows[0].id)}`;
    await pool.query(`ALTER TABLE vec_questions DETACH PARTITION ${slot1}`);
    try {
      const page = (await statistics({ namespace }).expect(200)).body as StatisticsPage;
      expect(page.namespaces[0].tables.questions.slots).toEqual([
        expect.objectContaining({ slot: 1, status: 'retired', rows: 5 }) as unknown,
        expect.objectContaining({ slot: 2, status: 'active', rows: 5 }) as unknown,
      ]);
      expect(page.summary).toMatchObject({ slots: 2, rows: 10 });
    } finally {
      await pool.query(
        `ALTER TABLE vec_questions ATTACH PARTITION ${slot1} FOR VALUES IN (${Number(rows[0].id)})`,
      );
    }
  });

  it('gives its connection back to the pool with the planner settings it changed reset', async () => {
    const { rows: defaults } = await pool.query<{ workers: string; jit: string }>(
      `SELECT reset_val AS workers, (SELECT reset_val FROM pg_settings WHERE name = 'jit') AS jit
       FROM pg_settings WHERE name = 'max_parallel_workers_per_gather'`,
    );
    await Promise.all([statistics({ limit: 50 }), statistics({ limit: 50 })]);
    const clients = await Promise.all(
      Array.from({ length: pool.totalCount }, () => pool.connect()),
    );
    try {
      for (const client of clients) {
        const { rows } = await client.query<{ workers: string; jit: string }>(
          `SELECT current_setting('max_parallel_workers_per_gather') AS workers,
                  current_setting('jit') AS jit`,
        );
        expect(rows[0]).toEqual(defaults[0]);
      }
    } finally {
      for (const client of clients) client.release();
    }
  });

  it('leaves out a slot that cleanup drops while a page is read, and never answers 500', async () => {
    const namespace = nameOf(3);
    await upsert(namespace, 4);
    for (let i = 0; i < 2; i++) {
      await app.http
        .post('/api/v1/vector/admin/rebuild-index-manual')
        .send({ namespace })
        .expect(200);
    }
    const { rows } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1',
      [namespace],
    );
    const slot1 = `vec_questions_s${Number(rows[0].id)}`;
    // A reader holds slot 1's table: cleanup's drop queues behind it, the page's count behind that.
    const reader = await pool.connect();
    try {
      await reader.query('BEGIN');
      await reader.query(`LOCK TABLE ${slot1} IN ACCESS SHARE MODE`);
      const cleanup = app.http
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
      const page = statistics({ limit: 10 }).then((res) => res);
      await waitingOn('%count(*)%UNION ALL%');
      await reader.query('COMMIT');
      expect((await cleanup).body).toMatchObject({ dropped_slots: [1] });
      const answer = await page;
      expect(answer.status).toBe(200);
      const listed = (answer.body as StatisticsPage).namespaces.find(
        (entry) => entry.namespace === namespace,
      )!;
      expect(listed.tables.questions.slots.map((slot) => slot.slot)).toEqual([2, 3]);
    } finally {
      reader.release();
    }
  });

  it('answers 200 to every page read while rebuilds and cleanups run on the same namespaces', async () => {
    const churned = [nameOf(10), nameOf(11)];
    let stop = false;
    const churn = async (namespace: string) => {
      for (let i = 0; i < 3; i++) {
        await app.http
          .post('/api/v1/vector/admin/rebuild-index-manual')
          .send({ namespace })
          .expect(200);
        await app.http
          .post('/api/v1/vector/cleanup-slots')
          .send({ namespace, keep_previous: false })
          .expect(200);
      }
    };
    // Pages that start at ns-0010, the first of them.
    const cursor = ((await statistics({ limit: 10 }).expect(200)).body as StatisticsPage)
      .next_cursor!;
    const statuses: number[] = [];
    const reads = (async () => {
      while (!stop) statuses.push((await statistics({ limit: 20, cursor })).status);
    })();
    await Promise.all(churned.map(churn)).finally(() => (stop = true));
    await reads;
    expect(statuses.length).toBeGreaterThan(0);
    expect(statuses.filter((status) => status !== 200)).toEqual([]);
  });
});
