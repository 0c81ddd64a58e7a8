import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LockHandle } from '../../src/lock';
import { testEnv } from '../support/env';
import { FreshDatabase, createFreshDatabase } from '../support/fresh-database';
import { LockFixture, lockFixture } from '../support/locks';
import { freePort } from '../support/ports';
import { PRISM_PROBLEM_PREFIX, PrismProxy } from '../support/prism';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

/**
 * The published OpenAPI document is the contract: real traffic for every route, success and
 * error cases, goes through Stoplight Prism's validating proxy (`prism proxy --errors`), which
 * refuses any request or response that does not match /api/docs-json.
 *
 * Adding a route: add an entry to `exchanges` below under its `METHOD /path` as the document
 * names it (a success case, and the error cases that are cheap to provoke). The test fails
 * for a documented route without an entry, and for an entry the document does not have.
 */

const SECRETS = {
  read: 'contract-read-0123456789',
  write: 'contract-write-0123456789',
  admin: 'contract-admin-0123456789',
  bad: 'contract-not-a-key-0123456789',
};
const API_KEYS = `reader:read:${SECRETS.read},writer:write:${SECRETS.write},boss:admin:${SECRETS.admin}`;
const V = '/api/v1/vector';

type Caller = 'anonymous' | keyof typeof SECRETS;

interface Exchange {
  /** What the case shows, for failure messages. */
  name: string;
  /** Concrete path, when the route's path has parameters. */
  path?: string;
  /** A function when it depends on an earlier answer (e.g. a cursor). */
  query?: Record<string, string> | (() => Record<string, string>);
  body?: unknown;
  /** A body that is not JSON (an NDJSON import), sent as is with its content type. */
  raw?: { type: string; text: string };
  headers?: Record<string, string>;
  /** Default: admin. `bad` sends a key the service does not know (Prism only checks presence). */
  as?: Caller;
  status: number;
  /** Runs before the request (e.g. takes a lock); its result is passed to `after`. */
  before?: () => Promise<unknown>;
  after?: (prepared: unknown) => Promise<unknown>;
  /** Extra checks of the answer, beyond the document. */
  check?: (body: Record<string, unknown>, headers: Headers) => void;
}

interface Context {
  /** Created by the first upsert, rebuilt, rolled back and cleaned up along the way. */
  namespace: string;
  /** Created with one upsert and never rebuilt: no previous slot to roll back to. */
  fresh: string;
  /** Never rebuilt. */
  lonely: string;
  /** Never created. */
  missing: string;
  locks: LockFixture;
  lockKey: (name: string) => string;
  /** Set from an answer, for a later request. */
  cursor?: string;
  itemsCursor?: string;
  importId?: string;
}

const item = (ref: string) => ({ obj_ref: ref, content: `content of ${ref}` });

/**
 * Every documented route, in the order the cases run (later cases rely on the state earlier
 * ones made). Keys are `METHOD /path` exactly as the document writes them.
 */
const exchanges = (c: Context): Record<string, Exchange[]> => ({
  'GET /metrics': [{ name: 'Prometheus text', as: 'anonymous', status: 200 }],
  [`GET ${V}/health`]: [{ name: 'all dependencies up', as: 'anonymous', status: 200 }],
  [`GET ${V}/health/live`]: [{ name: 'live', as: 'anonymous', status: 200 }],
  [`GET ${V}/health/ready`]: [{ name: 'ready', as: 'anonymous', status: 200 }],
  [`POST ${V}/batch-upsert`]: [
    {
      name: 'creates the namespace',
      as: 'write',
      body: { items: [item('a'), item('b')], table_name: 'questions', namespace: c.namespace },
      status: 200,
    },
    {
      name: 'namespace omitted (defaults to "default")',
      as: 'write',
      body: { items: [item('d')], table_name: 'patterns' },
      status: 200,
    },
    {
      name: 'second namespace',
      as: 'write',
      body: { items: [item('f')], table_name: 'questions', namespace: c.fresh },
      status: 200,
    },
    {
      name: 'a namespace that is never rebuilt',
      as: 'write',
      body: { items: [item('l')], table_name: 'patterns', namespace: c.lonely },
      status: 200,
    },
    {
      name: 'client embedding of the wrong dimension: 400 with errors[] objects',
      as: 'write',
      body: {
        items: [{ ...item('e'), embedding: [0.5, 0.25, 1] }],
        table_name: 'questions',
        namespace: c.namespace,
      },
      status: 400,
      check: (body) =>
        expect(body.errors).toEqual([
          { field: 'items[0].embedding', message: expect.any(String) as unknown },
        ]),
    },
    {
      name: 'unregistered table: 400',
      as: 'write',
      body: { items: [item('a')], table_name: 'nope', namespace: c.namespace },
      status: 400,
    },
    {
      name: 'unknown body field (validation pipe): 400',
      as: 'write',
      body: { items: [item('a')], table_name: 'questions', namespace: c.namespace, extra: 1 },
      status: 400,
    },
    {
      name: 'unknown key: 401',
      as: 'bad',
      body: { items: [item('a')], table_name: 'questions' },
      status: 401,
    },
    {
      name: 'read key: 403',
      as: 'read',
      body: { items: [item('a')], table_name: 'questions' },
      status: 403,
    },
    {
      name: 'upsert lock held past the wait: 409',
      as: 'write',
      body: { items: [item('a')], table_name: 'questions', namespace: c.namespace },
      status: 409,
      before: () =>
        c.locks.locks.acquire(`lock:vector:upsert:questions:${c.namespace}`, { ttlMs: 30_000 }),
      after: (held) => (held as LockHandle).release(),
    },
    {
      name: 'Idempotency-Key, first use',
      as: 'write',
      headers: { 'idempotency-key': `contract-${c.namespace}` },
      body: { items: [item('i')], table_name: 'questions', namespace: c.namespace },
      status: 200,
    },
    {
      name: 'Idempotency-Key replayed',
      as: 'write',
      headers: { 'idempotency-key': `contract-${c.namespace}` },
      body: { items: [item('i')], table_name: 'questions', namespace: c.namespace },
      status: 200,
      check: (_body, headers) => expect(headers.get('idempotent-replayed')).toBe('true'),
    },
    {
      name: 'Idempotency-Key reused with another payload: 422',
      as: 'write',
      headers: { 'idempotency-key': `contract-${c.namespace}` },
      body: { items: [item('j')], table_name: 'questions', namespace: c.namespace },
      status: 422,
    },
  ],
  [`POST ${V}/search`]: [
    {
      name: 'by query',
      as: 'read',
      body: { table_name: 'questions', namespace: c.namespace, query: 'content of a', k: 2 },
      status: 200,
    },
    {
      name: 'defaults (namespace, k)',
      as: 'read',
      body: { table_name: 'patterns', query: 'content of d' },
      status: 200,
    },
    {
      name: 'neither query nor vector: 400',
      as: 'read',
      body: { table_name: 'questions', namespace: c.namespace },
      status: 400,
    },
    {
      name: 'unknown namespace: 404',
      as: 'read',
      body: { table_name: 'questions', namespace: c.missing, query: 'x' },
      status: 404,
    },
    {
      name: 'unknown key: 401',
      as: 'bad',
      body: { table_name: 'questions', query: 'x' },
      status: 401,
    },
  ],
  [`GET ${V}/statistics`]: [
    { name: 'first page', as: 'read', status: 200 },
    {
      name: 'a page of one',
      as: 'read',
      query: { limit: '1' },
      status: 200,
      check: (body) => {
        expect(body.next_cursor).toEqual(expect.any(String));
        c.cursor = body.next_cursor as string;
      },
    },
    {
      name: 'the next page, by cursor',
      as: 'read',
      query: () => ({ limit: '1', cursor: c.cursor! }),
      status: 200,
    },
    {
      name: 'one namespace and table',
      as: 'read',
      query: { namespace: c.namespace, table_name: 'questions' },
      status: 200,
    },
    { name: 'unknown namespace: 404', as: 'read', query: { namespace: c.missing }, status: 404 },
    { name: 'unregistered table: 400', as: 'read', query: { table_name: 'nope' }, status: 400 },
    { name: 'forged cursor: 400', as: 'read', query: { cursor: 'forged' }, status: 400 },
    { name: 'unknown key: 401', as: 'bad', status: 401 },
  ],
  [`POST ${V}/rebuild-index`]: [
    { name: 'force omitted', as: 'write', body: { namespace: c.namespace }, status: 200 },
    { name: 'forced', as: 'write', body: { namespace: c.fresh, force: true }, status: 200 },
    { name: 'unknown namespace: 404', as: 'write', body: { namespace: c.missing }, status: 404 },
    { name: 'read key: 403', as: 'read', body: { namespace: c.namespace }, status: 403 },
  ],
  [`GET ${V}/rebuilds/{namespace}`]: [
    { name: 'finished rebuild', as: 'read', path: `${V}/rebuilds/${c.namespace}`, status: 200 },
    { name: 'never rebuilt: 404', as: 'read', path: `${V}/rebuilds/${c.missing}`, status: 404 },
  ],
  [`POST ${V}/rollback`]: [
    { name: 'back to slot 1', body: { namespace: c.namespace }, status: 200 },
    { name: 'nothing to roll back to: 409', body: { namespace: c.lonely }, status: 409 },
    { name: 'unknown namespace: 404', body: { namespace: c.missing }, status: 404 },
    { name: 'write key: 403', as: 'write', body: { namespace: c.namespace }, status: 403 },
  ],
  [`POST ${V}/cleanup-slots`]: [
    { name: 'keep_previous omitted', body: { namespace: c.namespace }, status: 200 },
    {
      name: 'keep_previous false',
      body: { namespace: c.fresh, keep_previous: false },
      status: 200,
    },
    { name: 'unknown namespace: 404', body: { namespace: c.missing }, status: 404 },
    {
      name: 'rebuild lock held past the wait: 409',
      body: { namespace: c.namespace },
      status: 409,
      before: () => c.locks.locks.acquire(`lock:vector:rebuild:${c.namespace}`, { ttlMs: 30_000 }),
      after: (held) => (held as LockHandle).release(),
    },
  ],
  [`POST ${V}/admin/rebuild-index-manual`]: [
    { name: 'rebuild under the explicit lock', body: { namespace: c.namespace }, status: 200 },
    { name: 'unknown namespace: 404', body: { namespace: c.missing }, status: 404 },
    { name: 'write key: 403', as: 'write', body: { namespace: c.namespace }, status: 403 },
  ],
  [`GET ${V}/lock-status/{lock_key}`]: [
    {
      name: 'free lock (holder null)',
      as: 'read',
      path: `${V}/lock-status/${c.lockKey('free')}`,
      status: 200,
    },
    {
      name: 'held lock',
      as: 'read',
      path: `${V}/lock-status/${c.lockKey('held')}`,
      status: 200,
      before: () =>
        c.locks.locks.acquire(c.lockKey('held'), { ttlMs: 30_000, operation: 'contract' }),
      after: (held) => (held as LockHandle).release(),
      check: (body) => expect(body.holder).toMatchObject({ operation: 'contract' }),
    },
    {
      name: 'key outside the prefix: 400',
      as: 'read',
      path: `${V}/lock-status/elsewhere`,
      status: 400,
    },
  ],
  [`DELETE ${V}/lock/{lock_key}`]: [
    {
      name: 'force-release a held lock',
      path: `${V}/lock/${c.lockKey('stuck')}`,
      status: 200,
      before: () => c.locks.locks.acquire(c.lockKey('stuck'), { ttlMs: 30_000 }),
    },
    { name: 'not held: 404', path: `${V}/lock/${c.lockKey('free')}`, status: 404 },
    {
      name: 'holder changed: 409',
      path: `${V}/lock/${c.lockKey('changed')}`,
      query: { fencing_token: '0' },
      status: 409,
      before: () => c.locks.locks.acquire(c.lockKey('changed'), { ttlMs: 30_000 }),
      after: (held) => (held as LockHandle).release(),
    },
    { name: 'key outside the prefix: 400', path: `${V}/lock/elsewhere`, status: 400 },
    { name: 'read key: 403', as: 'read', path: `${V}/lock/${c.lockKey('free')}`, status: 403 },
  ],
  [`POST ${V}/items/get`]: [
    {
      name: 'found and not found',
      as: 'read',
      body: { table_name: 'questions', namespace: c.namespace, obj_refs: ['a', 'never'] },
      status: 200,
      check: (body) => expect(body.not_found).toEqual(['never']),
    },
    {
      name: 'with embeddings',
      as: 'read',
      body: {
        table_name: 'questions',
        namespace: c.namespace,
        obj_refs: ['a'],
        include_embeddings: true,
      },
      status: 200,
    },
    {
      name: 'an obj_ref twice: 400',
      as: 'read',
      body: { table_name: 'questions', namespace: c.namespace, obj_refs: ['a', 'a'] },
      status: 400,
    },
    {
      name: 'unknown namespace: 404',
      as: 'read',
      body: { table_name: 'questions', namespace: c.missing, obj_refs: ['a'] },
      status: 404,
    },
  ],
  [`GET ${V}/items`]: [
    {
      name: 'a page of one',
      as: 'read',
      query: { table_name: 'questions', namespace: c.namespace, limit: '1' },
      status: 200,
      check: (body) => {
        expect(body.next_cursor).toEqual(expect.any(String));
        c.itemsCursor = body.next_cursor as string;
      },
    },
    {
      name: 'the next page, by cursor, with embeddings',
      as: 'read',
      query: () => ({
        table_name: 'questions',
        namespace: c.namespace,
        cursor: c.itemsCursor!,
        include_embeddings: 'true',
      }),
      status: 200,
    },
    {
      name: 'NDJSON stream',
      as: 'read',
      query: { table_name: 'questions', namespace: c.namespace },
      headers: { accept: 'application/x-ndjson' },
      status: 200,
    },
    {
      name: 'forged cursor: 400',
      as: 'read',
      query: { table_name: 'questions', namespace: c.namespace, cursor: 'forged' },
      status: 400,
    },
    {
      name: 'unknown namespace: 404',
      as: 'read',
      query: { table_name: 'questions', namespace: c.missing },
      status: 404,
    },
  ],
  [`POST ${V}/batch-delete`]: [
    {
      name: 'deleted and not found',
      as: 'write',
      body: { table_name: 'questions', namespace: c.namespace, obj_refs: ['b', 'never'] },
      status: 200,
      check: (body) => expect(body).toMatchObject({ deleted: 1, not_found: ['never'] }),
    },
    {
      name: 'an obj_ref twice: 400',
      as: 'write',
      body: { table_name: 'questions', namespace: c.namespace, obj_refs: ['a', 'a'] },
      status: 400,
    },
    {
      name: 'unknown namespace: 404',
      as: 'write',
      body: { table_name: 'questions', namespace: c.missing, obj_refs: ['a'] },
      status: 404,
    },
    {
      name: 'read key: 403',
      as: 'read',
      body: { table_name: 'questions', namespace: c.namespace, obj_refs: ['a'] },
      status: 403,
    },
  ],
  [`POST ${V}/import`]: [
    {
      name: 'two lines',
      as: 'write',
      query: { table_name: 'questions', namespace: c.namespace },
      raw: {
        type: 'application/x-ndjson',
        text: `${JSON.stringify(item('i1'))}\n${JSON.stringify(item('i2'))}\n`,
      },
      status: 200,
      check: (body) => {
        expect(body.processed).toBe(2);
        c.importId = body.import_id as string;
      },
    },
    {
      name: 'a bad line: 400 with its number',
      as: 'write',
      query: { table_name: 'questions', namespace: c.namespace },
      raw: { type: 'application/x-ndjson', text: `${JSON.stringify(item('i3'))}\n{"obj_ref":1}\n` },
      status: 400,
      check: (body) => expect(body.line).toBe(2),
    },
  ],
  [`GET ${V}/imports/{id}`]: [
    {
      name: 'a finished import',
      as: 'read',
      get path() {
        return `${V}/imports/${c.importId}`;
      },
      status: 200,
    },
    {
      name: 'unknown id: 404',
      as: 'read',
      path: `${V}/imports/00000000-0000-4000-8000-000000000000`,
      status: 404,
    },
  ],
  [`GET ${V}/imports`]: [
    { name: 'latest of a namespace', as: 'read', query: { namespace: c.namespace }, status: 200 },
    { name: 'no import: 404', as: 'read', query: { namespace: c.lonely }, status: 404 },
  ],
  [`DELETE ${V}/namespaces/{namespace}`]: [
    { name: 'drop a namespace', path: `${V}/namespaces/${c.lonely}`, status: 200 },
    { name: 'unknown namespace: 404', path: `${V}/namespaces/${c.missing}`, status: 404 },
    {
      name: 'write key: 403',
      as: 'write',
      path: `${V}/namespaces/${c.namespace}`,
      status: 403,
    },
  ],
});

interface OpenApiDocument {
  paths: Record<
    string,
    Record<string, { security?: unknown[]; 'x-required-scope'?: string; responses?: object }>
  >;
}

const HTTP_METHODS = new Set(['get', 'put', 'post', 'delete', 'patch', 'head', 'options']);

describe('the OpenAPI document is the contract (Stoplight Prism validating real traffic)', () => {
  let database: FreshDatabase;
  let service: ServiceProcess;
  let prism: PrismProxy;
  let document: OpenApiDocument;
  let context: Context;
  const run = randomBytes(3).toString('hex');

  beforeAll(async () => {
    database = await createFreshDatabase('vector_contract');
    const port = await freePort();
    service = ServiceProcess.start(
      'main.js',
      testEnv({
        PORT: String(port),
        DATABASE_URL: database.url,
        API_KEYS,
        // 409 for a held lock without waiting the default 30 s.
        DEFAULT_WAIT_TIMEOUT_MS: '300',
      }),
    );
    const upstream = `http://127.0.0.1:${port}`;
    document = await waitFor(
      async () => {
        const response = await fetch(`${upstream}/api/docs-json`);
        return response.ok ? ((await response.json()) as OpenApiDocument) : undefined;
      },
      { timeoutMs: 30_000, what: 'the service' },
    );
    const file = join(mkdtempSync(join(tmpdir(), 'openapi-contract-')), 'openapi.json');
    writeFileSync(file, JSON.stringify(document));
    prism = await PrismProxy.start(file, upstream);
    const locks = lockFixture('redis');
    context = {
      namespace: `contract-${run}`,
      fresh: `contract-fresh-${run}`,
      lonely: `contract-lonely-${run}`,
      missing: `contract-missing-${run}`,
      locks,
      lockKey: (name) => `lock:contract:${run}:${name}`,
    };
  }, 120_000);

  afterAll(async () => {
    await prism?.stop();
    await context?.locks.close();
    service?.kill('SIGTERM');
    await service?.exited;
    await database?.drop();
  });

  const send = async (route: string, exchange: Exchange) => {
    const [method, routePath] = route.split(' ');
    const url = new URL(exchange.path ?? routePath, prism.url);
    const query = typeof exchange.query === 'function' ? exchange.query() : exchange.query;
    for (const [name, value] of Object.entries(query ?? {})) {
      url.searchParams.set(name, value);
    }
    const caller = exchange.as ?? 'admin';
    const headers: Record<string, string> = { ...exchange.headers };
    if (caller !== 'anonymous') headers.authorization = `Bearer ${SECRETS[caller]}`;
    if (exchange.body !== undefined) headers['content-type'] = 'application/json';
    if (exchange.raw) headers['content-type'] = exchange.raw.type;
    return fetch(url, {
      method,
      headers,
      body:
        exchange.raw?.text ??
        (exchange.body === undefined ? undefined : JSON.stringify(exchange.body)),
    });
  };

  it('has exchanges for exactly the routes the document lists', () => {
    const documented = Object.entries(document.paths).flatMap(([path, operations]) =>
      Object.keys(operations)
        .filter((method) => HTTP_METHODS.has(method))
        .map((method) => `${method.toUpperCase()} ${path}`),
    );
    const table = exchanges(context);
    expect({
      withoutExchanges: documented.filter((route) => !(route in table)).sort(),
      notDocumented: Object.keys(table)
        .filter((route) => !documented.includes(route))
        .sort(),
    }).toEqual({ withoutExchanges: [], notDocumented: [] });
    for (const [route, cases] of Object.entries(table)) {
      expect([route, cases.some((exchange) => exchange.status < 300)]).toEqual([route, true]);
    }
  });

  it('names the scope of every route; secured routes need a key, write and admin ones document 429', () => {
    for (const [path, operations] of Object.entries(document.paths)) {
      for (const [method, operation] of Object.entries(operations)) {
        if (!HTTP_METHODS.has(method)) continue;
        const scope = operation['x-required-scope'];
        const secured = (operation.security?.length ?? 0) > 0;
        expect([method, path, scope, secured]).toEqual([
          method,
          path,
          secured ? expect.stringMatching(/^(read|write|admin)$/) : 'public',
          secured,
        ]);
        const limited = scope === 'write' || scope === 'admin';
        expect([method, path, Object.keys(operation.responses ?? {}).includes('429')]).toEqual([
          method,
          path,
          limited,
        ]);
      }
    }
  });

  it('Prism validates: a request the document forbids never reaches the service', async () => {
    const mark = prism.mark();
    const response = await send(`POST ${V}/search`, {
      name: 'k is not a number',
      as: 'read',
      body: { table_name: 'questions', query: 'x', k: 'many' },
      status: 422,
    });
    expect(response.status).toBe(422);
    expect(((await response.json()) as { type: string }).type).toBe(
      `${PRISM_PROBLEM_PREFIX}UNPROCESSABLE_ENTITY`,
    );
    await waitFor(() => prism.complaintsSince(mark).length > 0, { what: "Prism's log line" });
  });

  it('every exchange matches the document, and answers as expected', async () => {
    const mark = prism.mark();
    const failures: string[] = [];
    for (const [route, cases] of Object.entries(exchanges(context))) {
      for (const exchange of cases) {
        const prepared = await exchange.before?.();
        let response: Response;
        try {
          response = await send(route, exchange);
        } finally {
          await exchange.after?.(prepared);
        }
        const text = await response.text();
        const body = (
          text && /^application\/(problem\+)?json/.test(response.headers.get('content-type') ?? '')
            ? JSON.parse(text)
            : {}
        ) as Record<string, unknown>;
        const where = `${route} — ${exchange.name}`;
        const violations = response.headers.get('sl-violations');
        if (violations) failures.push(`${where}: Prism: ${violations}`);
        else if (typeof body.type === 'string' && body.type.startsWith(PRISM_PROBLEM_PREFIX)) {
          failures.push(`${where}: answered by Prism: ${text}`);
        } else if (response.status !== exchange.status) {
          failures.push(
            `${where}: status ${response.status}, expected ${exchange.status}: ${text}`,
          );
        } else {
          if (response.status >= 400 && !route.includes('/health')) {
            const type = response.headers.get('content-type') ?? '';
            if (!type.startsWith('application/problem+json')) {
              failures.push(`${where}: content-type ${type}`);
            }
          }
          try {
            exchange.check?.(body, response.headers);
          } catch (error) {
            failures.push(`${where}: ${(error as Error).message}`);
          }
        }
      }
    }
    // Prism logs after answering: stop it so that every line is in.
    await prism.stop();
    const complaints = prism.complaintsSince(mark);
    expect({ failures, complaints }).toEqual({ failures: [], complaints: [] });
  }, 120_000);
});
