import { randomBytes } from 'node:crypto';
import { Client, Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { IndexMaintenance } from '../../src/vector/index-maintenance.service';
import { compileFilter, parseFilter } from '../../src/vector/metadata-filter';
import { VectorItemRepository } from '../../src/vector/repositories/vector-item.repository';
import { TestApp, startTestApp } from '../support/app';
import { TEST_DATABASE_URL } from '../support/env';

const DIM = 384;
const ITEMS = 4_000;

/** mulberry32: seeded, so the data and its expected answers are the same on every run. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const random = seeded(19);
const gaussian = () =>
  Math.sqrt(-2 * Math.log(random() + 1e-12)) * Math.cos(2 * Math.PI * random());
const centres = Array.from({ length: 20 }, () => Array.from({ length: DIM }, gaussian));
const normalised = (v: number[]) => {
  const norm = Math.hypot(...v);
  return v.map((x) => x / norm);
};
const near = (centre: number[], spread: number) =>
  normalised(centre.map((x) => x + spread * gaussian()));
const clustered = () => near(centres[Math.floor(random() * centres.length)], 0.8);

type Metadata = Record<string, unknown>;
interface Item {
  obj_ref: string;
  embedding: number[];
  metadata: Metadata;
}

/**
 * Known distribution: category c0..c9 (10% each), rare r0..r99 (1% each, 40 items), price a
 * number in [0, 1000) except on every 97th item where it is the string "cheap", tag on half,
 * promo on 10 items (0.25%).
 */
const items: Item[] = Array.from({ length: ITEMS }, (_, i) => ({
  obj_ref: `v${i}`,
  embedding: clustered(),
  metadata: {
    category: `c${i % 10}`,
    rare: `r${Math.floor(i / 10) % 100}`,
    price: i % 97 === 0 ? 'cheap' : Math.round(random() * 100_000) / 100,
    ...(i % 2 === 0 ? { tag: `t${i % 7}` } : {}),
    ...(i % 400 === 3 ? { promo: true } : {}),
  },
}));
const queries = Array.from({ length: 20 }, clustered);

const cosineDistance = (a: number[], b: number[]) => 1 - a.reduce((s, x, j) => s + x * b[j], 0);

/** The exact filtered top k, computed here from the seeded data (independent of the SQL). */
function exactTopK(query: number[], matches: (m: Metadata) => boolean, k: number) {
  return items
    .filter((item) => matches(item.metadata))
    .map((item) => ({ obj_ref: item.obj_ref, distance: cosineDistance(item.embedding, query) }))
    .sort((a, b) => a.distance - b.distance)
    .slice(0, k);
}

interface Hit {
  obj_ref: string;
  score: number;
  metadata: Metadata;
}

describe('Vector search: metadata filters and search by item', () => {
  let app: TestApp;
  let pool: Pool;
  const namespace = `filter-${randomBytes(3).toString('hex')}`;
  const byRef = new Map(items.map((item) => [item.obj_ref, item]));

  beforeAll(async () => {
    // ef_search 40 (pgvector's default): with 100 the planner prefers the exact scan through
    // the GIN index even at 10% for a partition as small as this one (so does the rebuild test).
    app = await startTestApp({ LOG_LEVEL: 'error', SEARCH_EF_SEARCH: '40' });
    pool = app.app.get<Pool>(PG_POOL);
    for (let start = 0; start < ITEMS; start += 500) {
      await app.http
        .post('/api/v1/vector/batch-upsert')
        .send({
          table_name: 'questions',
          namespace,
          items: items.slice(start, start + 500).map((item) => ({
            obj_ref: item.obj_ref,
            content: `item ${item.obj_ref}`,
            metadata: item.metadata,
            embedding: item.embedding,
          })),
        })
        .expect(200);
    }
    await pool.query(`ANALYZE ${await partition()}`);
  }, 120_000);

  afterAll(async () => {
    await app.close();
  });

  async function slotId(ns = namespace): Promise<number> {
    const { rows } = await pool.query<{ id: string }>(
      `SELECT s.id FROM vector_slots s JOIN vector_namespaces n
         ON n.namespace = s.namespace AND n.active_slot = s.slot WHERE n.namespace = $1`,
      [ns],
    );
    return Number(rows[0].id);
  }

  const partition = async (ns = namespace) => `vec_questions_s${await slotId(ns)}`;

  const search = (body: object) =>
    app.http.post('/api/v1/vector/search').send({ table_name: 'questions', namespace, ...body });

  /** Mean recall@k of filtered searches against the exact filtered answer, ties counting. */
  async function filteredRecall(filter: object, matches: (m: Metadata) => boolean, k = 10) {
    let hits = 0;
    let expected = 0;
    for (const query of queries) {
      const response = await search({ vector: query, filter, k }).expect(200);
      const results = response.body.results as Hit[];
      const exact = exactTopK(query, matches, k);
      // k rows whenever k rows match, every one matching, best first.
      expect(results).toHaveLength(exact.length);
      for (const hit of results) expect(matches(byRef.get(hit.obj_ref)!.metadata)).toBe(true);
      const scores = results.map((hit) => hit.score);
      expect(scores).toEqual([...scores].sort((a, b) => b - a));
      const last = exact[exact.length - 1].distance + 1e-5;
      hits += results.filter(
        (hit) => cosineDistance(byRef.get(hit.obj_ref)!.embedding, query) <= last,
      ).length;
      expected += exact.length;
    }
    return hits / expected;
  }

  it('at 10% selectivity returns k matching items with recall ≥ 0.9 against the exact scan', async () => {
    expect(
      await filteredRecall({ category: 'c3' }, (m) => m.category === 'c3'),
    ).toBeGreaterThanOrEqual(0.9);
  });

  it('at 1% selectivity returns k matching items with recall ≥ 0.9 against the exact scan', async () => {
    expect(await filteredRecall({ rare: 'r42' }, (m) => m.rare === 'r42')).toBeGreaterThanOrEqual(
      0.9,
    );
  });

  it('answers ranges, $in, $ne, $exists, $and and $or like the same predicate over the data', async () => {
    const price = (m: Metadata) => (typeof m.price === 'number' ? m.price : Number.NaN);
    const cases: [object, (m: Metadata) => boolean][] = [
      // Items whose price is the string "cheap" simply do not match a numeric range.
      [{ price: { $gte: 100, $lt: 200 } }, (m) => price(m) >= 100 && price(m) < 200],
      [
        { category: { $in: ['c1', 'c2'] }, tag: { $exists: false } },
        (m) => ['c1', 'c2'].includes(m.category as string) && m.tag === undefined,
      ],
      [
        { $or: [{ rare: 'r7' }, { $and: [{ category: 'c5' }, { price: { $lte: 50 } }] }] },
        (m) => m.rare === 'r7' || (m.category === 'c5' && price(m) <= 50),
      ],
      [{ price: 'cheap' }, (m) => m.price === 'cheap'],
      [{ category: { $ne: 'c0' }, tag: 't3' }, (m) => m.category !== 'c0' && m.tag === 't3'],
    ];
    for (const [filter, matches] of cases) {
      expect([filter, await filteredRecall(filter, matches)]).toEqual([filter, expect.any(Number)]);
      expect(await filteredRecall(filter, matches)).toBeGreaterThanOrEqual(0.9);
    }
  });

  it('returns every match, exactly, when fewer than k items match', async () => {
    // 40 items carry rare r13; k 60 asks for more than exist.
    const matches = (m: Metadata) => m.rare === 'r13';
    const response = await search({ vector: queries[0], filter: { rare: 'r13' }, k: 60 }).expect(
      200,
    );
    const refs = (response.body.results as Hit[]).map((hit) => hit.obj_ref);
    expect(refs).toEqual(exactTopK(queries[0], matches, 60).map((hit) => hit.obj_ref));
    const none = await search({ vector: queries[0], filter: { rare: 'r1000' } }).expect(200);
    expect(none.body.results).toEqual([]);
  });

  it('falls back to an exact scan when the index scan runs out short of k (SEARCH_MAX_SCAN_TUPLES)', async () => {
    // A replica whose iterative scans give up after 30 index tuples (then hand out only the
    // candidates already seen). $exists on a field 10 items have: the planner, without
    // statistics for the expression, expects nearly every row to match and scans the index,
    // which comes back short; the exact scan then answers, in exact order.
    const narrow = await startTestApp({
      LOG_LEVEL: 'error',
      SEARCH_EF_SEARCH: '10',
      SEARCH_MAX_SCAN_TUPLES: '30',
    });
    const promo = { promo: { $exists: true } };
    const matches = (m: Metadata) => m.promo !== undefined;
    try {
      const id = await slotId();
      const plan = await narrow.app
        .get(VectorItemRepository)
        .explainFilteredSearch(
          'questions',
          { id, slot: 1, namespace, dimension: DIM },
          queries[0],
          parseFilter(promo).filter!,
          { k: 8, efSearch: 10, sessionEfSearch: 10, maxScanTuples: 30 },
        );
      expect(plan).toContain(`Index Scan using vec_questions_s${id}_hnsw`);
      for (const query of queries.slice(0, 5)) {
        const response = await narrow.http
          .post('/api/v1/vector/search')
          .send({ table_name: 'questions', namespace, vector: query, filter: promo, k: 8 })
          .expect(200);
        expect((response.body.results as Hit[]).map((hit) => hit.obj_ref)).toEqual(
          exactTopK(query, matches, 8).map((hit) => hit.obj_ref),
        );
      }
    } finally {
      await narrow.close();
    }
  });

  it('scans the HNSW index for a 10% filter, iteratively, and has the metadata GIN index', async () => {
    const id = await slotId();
    const { filter } = parseFilter({ category: 'c3' });
    const plan = await app.app
      .get(VectorItemRepository)
      .explainFilteredSearch(
        'questions',
        { id, slot: 1, namespace, dimension: DIM },
        queries[0],
        filter!,
        { k: 10, efSearch: 40, sessionEfSearch: 40, maxScanTuples: 20_000 },
        true,
      );
    expect(plan).toContain(`Index Scan using vec_questions_s${id}_hnsw`);
    // The statement's own settings are in force for its scan: with ef_search 40 a scan that
    // stopped after its first candidates could pass at most 40 rows to the filter; this one
    // went on until 10 matched (and the session setting is left as it was).
    const scanned =
      /Index Scan using \S+_hnsw .*rows=(\d+) loops=1\)\n.*\n\s*Filter: .*\n\s*Rows Removed by Filter: (\d+)/.exec(
        plan,
      );
    expect(scanned).not.toBeNull();
    expect(Number(scanned![1])).toBe(10);
    expect(Number(scanned![1]) + Number(scanned![2])).toBeGreaterThan(40);
    // The settings end with the statement: the connection that ran it is as it was.
    const repository = app.app.get(VectorItemRepository);
    const compiled = compileFilter(filter!, 'metadata', 4);
    const client = new Client({
      connectionString: TEST_DATABASE_URL,
      options: '-c hnsw.ef_search=40',
    });
    await client.connect();
    try {
      await client.query(
        repository.guardedSearchSql('questions', { id, slot: 1, dimension: DIM }, false, {
          ...compiled,
          efSearch: 200,
          maxScanTuples: 1234,
        }),
        [`[${queries[0].join(',')}]`, 10, namespace, ...compiled.values],
      );
      const { rows: settings } = await client.query<{ scan: string; tuples: string; ef: string }>(
        `SELECT current_setting('hnsw.iterative_scan') AS scan,
                current_setting('hnsw.max_scan_tuples') AS tuples,
                current_setting('hnsw.ef_search') AS ef`,
      );
      expect(settings[0]).toEqual({ scan: 'off', tuples: '20000', ef: '40' });
    } finally {
      await client.end();
    }
    const { rows } = await pool.query<{ indexdef: string }>(
      `SELECT indexdef FROM pg_indexes WHERE indexname = $1`,
      [`vec_questions_s${id}_meta`],
    );
    expect(rows[0].indexdef).toMatch(/USING gin \(metadata jsonb_path_ops\)/);
  });

  describe('bad filters: 400 problem+json naming the field, before any database access', () => {
    const cases: [string, unknown, string][] = [
      ['an unknown operator', { price: { $where: 'sleep(10)' } }, 'filter.price.$where'],
      ['an unknown top-level operator', { $expr: { $gt: [1, 0] } }, 'filter.$expr'],
      [
        'too deep a nesting',
        { $and: [{ $or: [{ $and: [{ $or: [{ $and: [{ a: 1 }] }] }] }] }] },
        'filter.$and[0].$or[0].$and[0].$or[0].$and',
      ],
      ['a range on a boolean', { price: { $gt: true } }, 'filter.price.$gt'],
      [
        '$in over 256 values',
        { rare: { $in: Array.from({ length: 257 }, (_, i) => `r${i}`) } },
        'filter.rare.$in',
      ],
      ['an object as a value', { category: { name: 'c1' } }, 'filter.category.name'],
      ['SQL in a field name', { "category' OR '1'='1": 'x' }, `filter["category' OR '1'='1"]`],
      [
        'SQL in a path',
        { 'a); DROP TABLE vector_namespaces; --': 1 },
        'filter["a); DROP TABLE vector_namespaces; --"]',
      ],
      [
        'a quote in a nested field name',
        { $or: [{ 'tag"': { $exists: true } }] },
        'filter.$or[0]["tag\\""]',
      ],
      ['not an object', 'category = c1', 'filter'],
      ['an empty filter', {}, 'filter'],
    ];

    it.each(cases)('refuses %s', async (_, filter, field) => {
      // A namespace that does not exist: were the filter checked after a lookup, this were 404.
      const response = await search({
        namespace: `missing-${randomBytes(3).toString('hex')}`,
        vector: queries[0],
        filter,
      });
      expect(response.status).toBe(400);
      expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(response.body.errors).toEqual(
        expect.arrayContaining([expect.objectContaining({ field })]),
      );
    });

    it('refuses more than one of query, vector and obj_ref, or none', async () => {
      for (const body of [
        { vector: queries[0], obj_ref: 'v1' },
        { query: 'x', obj_ref: 'v1' },
        {},
      ]) {
        const response = await search(body);
        expect(response.status).toBe(400);
        expect(response.body.errors[0].field).toBe('query');
      }
    });
  });

  it('treats SQL in values as data: no match, nothing changed', async () => {
    const before = await pool.query<{ count: number }>(
      `SELECT count(*)::int AS count FROM ${await partition()}`,
    );
    for (const value of [
      `c1' OR '1'='1`,
      `c1"}'::jsonb OR true; DROP TABLE vector_namespaces; --`,
      `\\"}`,
    ]) {
      const response = await search({
        vector: queries[0],
        filter: {
          $or: [{ category: value }, { rare: { $in: [value, 'r1000'] } }],
        },
      }).expect(200);
      expect(response.body.results).toEqual([]);
      // A string bound compares with string values only: never a cast error.
      const range = await search({ vector: queries[0], filter: { price: { $gt: value } } });
      expect(range.status).toBe(200);
      for (const hit of range.body.results as Hit[]) expect(hit.metadata.price).toBe('cheap');
    }
    const after = await pool.query<{ count: number }>(
      `SELECT count(*)::int AS count FROM ${await partition()}`,
    );
    expect(after.rows[0].count).toBe(before.rows[0].count);
    await pool.query('SELECT 1 FROM vector_namespaces LIMIT 1');
  });

  describe('search by obj_ref', () => {
    const source = items[7];

    beforeAll(async () => {
      // Near-duplicates of v7, and an unrelated item with the same category.
      await app.http
        .post('/api/v1/vector/batch-upsert')
        .send({
          table_name: 'questions',
          namespace,
          items: [0, 1, 2].map((i) => ({
            obj_ref: `dup-${i}`,
            content: `near-duplicate ${i} of v7`,
            metadata: { category: i === 2 ? 'other' : source.metadata.category, copy: true },
            embedding: near(source.embedding, 0.002),
          })),
        })
        .expect(200);
    });

    it('finds the item’s near-duplicates and leaves the item itself out', async () => {
      const response = await search({ obj_ref: source.obj_ref, k: 3 }).expect(200);
      const results = response.body.results as Hit[];
      expect(results.map((hit) => hit.obj_ref).sort()).toEqual(['dup-0', 'dup-1', 'dup-2']);
      expect(results[0].score).toBeGreaterThan(0.99);
      const wide = await search({ obj_ref: source.obj_ref, k: 50 }).expect(200);
      expect(wide.body.results).toHaveLength(50);
      expect((wide.body.results as Hit[]).map((hit) => hit.obj_ref)).not.toContain(source.obj_ref);
    });

    it('combines with a filter', async () => {
      const response = await search({
        obj_ref: source.obj_ref,
        k: 5,
        filter: { copy: true, category: { $ne: 'other' } },
      }).expect(200);
      expect((response.body.results as Hit[]).map((hit) => hit.obj_ref).sort()).toEqual([
        'dup-0',
        'dup-1',
      ]);
    });

    it('answers 404 problem+json for an unknown obj_ref', async () => {
      const response = await search({ obj_ref: 'no-such-item' });
      expect(response.status).toBe(404);
      expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(response.body.detail).toContain('no-such-item');
    });
  });

  it('gives a rebuilt slot its GIN index, and start-up maintenance restores a missing one', async () => {
    await app.http
      .post('/api/v1/vector/rebuild-index')
      .send({ namespace, force: true })
      .expect(200);
    const id = await slotId();
    const metaIndex = `vec_questions_s${id}_meta`;
    const valid = async () =>
      (
        await pool.query(
          `SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1 AND i.indisvalid`,
          [metaIndex],
        )
      ).rowCount;
    expect(await valid()).toBe(1);
    // A slot made before filtered search: no GIN index until maintenance runs.
    await pool.query(`DROP INDEX ${metaIndex}`);
    expect(await valid()).toBe(0);
    const created = await app.app.get(IndexMaintenance).ensureAll();
    expect(created).toContain(`questions:${namespace}:2`);
    expect(await valid()).toBe(1);
    // Filtered search in the new slot still agrees with the exact scan.
    expect(
      await filteredRecall({ category: 'c3' }, (m) => m.category === 'c3'),
    ).toBeGreaterThanOrEqual(0.9);
  });
});
