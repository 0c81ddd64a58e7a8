import fc from 'fast-check';
import Redis from 'ioredis';
import { Client } from 'pg';
import { TestApp, startTestApp } from '../support/app';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { PrivateRedis } from '../support/redis-server';

/**
 * Property: no malformed request gets a 5xx, every error is problem+json, and nothing is
 * written. Runs against a private Redis and a fresh database so "unchanged" can be checked
 * exactly (other test files share the common ones).
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 10_000);

const nasty = fc.oneof(
  fc.constantFrom(
    "'; DROP TABLE vector_namespaces; --",
    '" OR 1=1 --',
    'questions;',
    '../../etc/passwd',
    '..%2F..%2Fetc',
    '%00',
    '\u0000',
    'lock:*',
    'lock:{}',
    'idem:vector:rebuild:x',
    '*\r\nFLUSHALL\r\n',
    '$1',
    '{a}{b}',
    'QUESTIONS',
    ' questions',
    '\u202Eevil',
    '😀',
    'a'.repeat(70),
    '',
  ),
  fc.string({ unit: 'grapheme', maxLength: 80 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
);

const lockKey = fc.oneof(
  nasty,
  fc.constantFrom(
    'lock:',
    'lock:a b',
    'lock:x#fence',
    'lock:../../x',
    '%2e%2e%2flock',
    'x'.repeat(5_000),
  ),
  nasty.map((tail) => `lock:${tail}`),
);

const junk = fc.anything({
  maxDepth: 6,
  withBigInt: false,
  withNullPrototype: false,
  withObjectString: true,
});

const deep = fc.integer({ min: 50, max: 400 }).map((depth) => {
  let value: unknown = 'bottom';
  for (let i = 0; i < depth; i++) value = { items: [value] };
  return value;
});

const badItem = fc.record(
  {
    obj_ref: fc.oneof(nasty, fc.integer(), fc.constant(null)),
    content: fc.oneof(fc.string({ maxLength: 50 }), fc.integer(), fc.constant('x'.repeat(40_000))),
    embedding: fc.oneof(
      fc.array(fc.oneof(fc.double(), fc.constant('NaN'), fc.constant(null)), { maxLength: 5 }),
      fc.constant(new Array(384).fill(0)),
      fc.string(),
    ),
    metadata: fc.oneof(fc.string(), fc.array(fc.integer()), junk),
    extra: junk,
  },
  { requiredKeys: [] },
);

const upsertBody = fc.record(
  {
    items: fc.oneof(fc.array(badItem, { maxLength: 4 }), junk, fc.constant([])),
    table_name: nasty,
    namespace: nasty,
  },
  { requiredKeys: ['table_name'] },
);

const namespaceBody = fc.record(
  { namespace: nasty, force: fc.oneof(junk, fc.boolean()) },
  { requiredKeys: ['namespace'] },
);
const searchBody = fc.record(
  {
    table_name: nasty,
    namespace: nasty,
    query: fc.oneof(fc.string(), junk),
    vector: fc.oneof(fc.array(fc.double()), junk),
    k: fc.oneof(fc.integer(), fc.double(), fc.string()),
  },
  { requiredKeys: ['table_name'] },
);

interface Request {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  payload?: string;
  headers: Record<string, string>;
}

const json = (body: unknown) => JSON.stringify(body) ?? 'null';
const enc = encodeURIComponent;
const POSTS = [
  'batch-upsert',
  'rebuild-index',
  'admin/rebuild-index-manual',
  'cleanup-slots',
  'rollback',
  'search',
];

const request: fc.Arbitrary<Request> = fc.oneof(
  upsertBody.map((b) => ({
    method: 'POST' as const,
    url: '/api/v1/vector/batch-upsert',
    payload: json(b),
    headers: {},
  })),
  fc
    .tuple(
      fc.constantFrom('rebuild-index', 'admin/rebuild-index-manual', 'cleanup-slots', 'rollback'),
      namespaceBody,
    )
    .map(([path, b]) => ({
      method: 'POST' as const,
      url: `/api/v1/vector/${path}`,
      payload: json(b),
      headers: {},
    })),
  searchBody.map((b) => ({
    method: 'POST' as const,
    url: '/api/v1/vector/search',
    payload: json(b),
    headers: {},
  })),
  fc.tuple(fc.constantFrom(...POSTS), fc.oneof(junk, deep)).map(([path, b]) => ({
    method: 'POST' as const,
    url: `/api/v1/vector/${path}`,
    payload: json(b),
    headers: {},
  })),
  fc.tuple(fc.constantFrom(...POSTS), fc.string({ maxLength: 200 })).map(([path, raw]) => ({
    method: 'POST' as const,
    url: `/api/v1/vector/${path}`,
    payload: raw,
    headers: {},
  })),
  fc
    .tuple(
      fc.constantFrom('batch-upsert', 'rebuild-index', 'cleanup-slots'),
      nasty,
      fc.constantFrom('x'.repeat(300), 'has space', 'a"b', 'é'),
    )
    .map(([path, ns, key]) => ({
      method: 'POST' as const,
      url: `/api/v1/vector/${path}`,
      payload: json({ namespace: ns }),
      headers: { 'idempotency-key': key },
    })),
  fc.tuple(fc.constantFrom('GET' as const, 'DELETE' as const), lockKey).map(([method, key]) => ({
    method,
    url:
      method === 'GET'
        ? `/api/v1/vector/lock-status/${enc(key)}`
        : `/api/v1/vector/lock/${enc(key)}`,
    headers: {},
  })),
  fc.tuple(fc.constantFrom('GET' as const, 'DELETE' as const), lockKey).map(([method, key]) => ({
    method,
    url: method === 'GET' ? `/api/v1/vector/lock-status/${key}` : `/api/v1/vector/lock/${key}`,
    headers: {},
  })),
  fc.tuple(nasty, nasty, fc.string({ maxLength: 10 })).map(([ns, table, extra]) => ({
    method: 'GET' as const,
    url: `/api/v1/vector/statistics?namespace=${enc(ns)}&table_name=${enc(table)}${extra ? `&${enc(extra)}=1` : ''}`,
    headers: {},
  })),
  nasty.map((ns) => ({
    method: 'GET' as const,
    url: `/api/v1/vector/rebuilds/${enc(ns)}`,
    headers: {},
  })),
);

describe('fuzzing every endpoint with malformed requests', () => {
  let redis: PrivateRedis;
  let database: FreshDatabase;
  let app: TestApp;
  let inspect: Redis;

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    database = await createFreshDatabase('vector_fuzz');
    app = await startTestApp({
      DATABASE_URL: database.url,
      REDIS_URL: redis.url,
      LOG_LEVEL: 'fatal',
    });
    inspect = new Redis(redis.url);
  });

  afterAll(async () => {
    await app?.close();
    await inspect?.quit();
    await redis?.kill();
    await database?.drop();
  });

  /** Everything the service could have written: Redis keys (rate-limit counters aside) and rows. */
  const snapshot = async () => {
    const keys = (await inspect.keys('*')).filter((key) => !key.startsWith('{ratelimit:')).sort();
    const values = await Promise.all(keys.map((key) => inspect.dumpBuffer(key)));
    const pg = new Client({ connectionString: database.url });
    await pg.connect();
    try {
      const { rows } = await pg.query<{ name: string; rows: string }>(
        `SELECT c.relname AS name, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', c.relname), false, true, '')))[1]::text AS rows
         FROM pg_class c WHERE c.relkind IN ('r', 'p') AND c.relnamespace = 'public'::regnamespace ORDER BY 1`,
      );
      return { redis: keys.map((key, i) => [key, values[i]?.toString('base64')]), postgres: rows };
    } finally {
      await pg.end();
    }
  };

  it(`answers ${RUNS} malformed requests with 4xx problem+json and writes nothing`, async () => {
    const before = await snapshot();
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(request, async (req) => {
        const response = await app.app.inject({
          method: req.method,
          url: req.url,
          payload: req.payload,
          headers: { 'content-type': 'application/json', ...req.headers },
        });
        statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1);
        if (response.statusCode >= 500) {
          throw new Error(
            `${req.method} ${req.url} → ${response.statusCode}: ${response.body.slice(0, 300)}`,
          );
        }
        if (response.statusCode >= 400) {
          expect(response.headers['content-type']).toContain('application/problem+json');
          const body = JSON.parse(response.body) as { status: number; title: string };
          expect(body.status).toBe(response.statusCode);
          expect(typeof body.title).toBe('string');
        }
      }),
      { numRuns: RUNS, seed: Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31) },
    );
    expect(await snapshot()).toEqual(before);
    expect([...statuses.keys()].every((status) => status < 500)).toBe(true);
  }, 240_000);
});
