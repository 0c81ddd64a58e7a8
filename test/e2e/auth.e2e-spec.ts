import { Logger } from '@nestjs/common';
import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { LockService, PostgresFencing, StaleFenceError } from '../../src/lock';
import { TestApp, startTestApp } from '../support/app';
import { testEnv } from '../support/env';
import { ServiceProcess } from '../support/service-process';

const SECRETS = {
  read: 'read-secret-0123456789',
  write: 'write-secret-0123456789',
  admin: 'admin-secret-0123456789',
};
const API_KEYS = `reader:read:${SECRETS.read},writer:write:${SECRETS.write},boss:admin:${SECRETS.admin}`;

type Level = 'public' | 'read' | 'write' | 'admin';
const RANK = { none: 0, read: 1, write: 2, admin: 3 } as const;

/** Every route the app registers, with the scope it needs and a harmless request. */
const ROUTES: { method: 'get' | 'post' | 'delete'; path: string; needs: Level; body?: object }[] = [
  { method: 'get', path: '/api/v1/vector/health', needs: 'public' },
  { method: 'get', path: '/api/v1/vector/health/live', needs: 'public' },
  { method: 'get', path: '/api/v1/vector/health/ready', needs: 'public' },
  { method: 'get', path: '/metrics', needs: 'public' },
  { method: 'get', path: '/api/v1/vector/statistics?namespace=auth-none', needs: 'read' },
  { method: 'get', path: '/api/v1/vector/rebuilds/auth-none', needs: 'read' },
  { method: 'get', path: '/api/v1/vector/lock-status/lock:auth:x', needs: 'read' },
  { method: 'post', path: '/api/v1/vector/search', needs: 'read', body: {} },
  { method: 'post', path: '/api/v1/vector/batch-upsert', needs: 'write', body: {} },
  {
    method: 'post',
    path: '/api/v1/vector/rebuild-index',
    needs: 'write',
    body: { namespace: 'auth-none' },
  },
  {
    method: 'post',
    path: '/api/v1/vector/admin/rebuild-index-manual',
    needs: 'admin',
    body: { namespace: 'auth-none' },
  },
  {
    method: 'post',
    path: '/api/v1/vector/cleanup-slots',
    needs: 'admin',
    body: { namespace: 'auth-none' },
  },
  {
    method: 'post',
    path: '/api/v1/vector/rollback',
    needs: 'admin',
    body: { namespace: 'auth-none' },
  },
  { method: 'delete', path: '/api/v1/vector/lock/lock:auth:x', needs: 'admin' },
  { method: 'post', path: '/api/v1/vector/batch-delete', needs: 'write', body: {} },
  { method: 'post', path: '/api/v1/vector/items/get', needs: 'read', body: {} },
  {
    method: 'get',
    path: '/api/v1/vector/items?table_name=questions&namespace=auth-none',
    needs: 'read',
  },
  { method: 'delete', path: '/api/v1/vector/namespaces/auth-none', needs: 'admin' },
];

describe('Auth: API keys and scopes', () => {
  let app: TestApp;

  beforeAll(async () => {
    app = await startTestApp({ API_KEYS });
  });

  afterAll(async () => {
    await app.close();
  });

  const send = (route: (typeof ROUTES)[number], secret?: string, header = 'authorization') => {
    let request = app.http[route.method](route.path);
    if (secret)
      request = request.set(header, header === 'authorization' ? `Bearer ${secret}` : secret);
    return route.body ? request.send(route.body) : request;
  };

  const matrix = ROUTES.flatMap((route) =>
    (['none', 'read', 'write', 'admin'] as const).map(
      (caller) => [`${route.method.toUpperCase()} ${route.path}`, caller, route] as const,
    ),
  );

  it.each(matrix)('%s with %s key', async (_name, caller, route) => {
    const response = await send(route, caller === 'none' ? undefined : SECRETS[caller]);
    if (route.needs === 'public') {
      expect([401, 403]).not.toContain(response.status);
    } else if (caller === 'none') {
      expect(response.status).toBe(401);
      expect(response.headers['www-authenticate']).toBe('Bearer');
      expect(response.headers['content-type']).toContain('application/problem+json');
    } else if (RANK[caller] < RANK[route.needs]) {
      expect(response.status).toBe(403);
      expect(response.body.detail).toContain(`needs the ${route.needs} scope`);
    } else {
      expect([401, 403]).not.toContain(response.status);
      expect(response.status).toBeLessThan(500);
    }
  });

  it('accepts X-API-Key and refuses unknown or malformed credentials', async () => {
    const stats = ROUTES[4];
    expect((await send(stats, SECRETS.read, 'x-api-key')).status).toBe(404); // authorised: unknown namespace
    expect((await send(stats, 'not-a-key-0123456789')).status).toBe(401);
    expect((await send(stats, SECRETS.read.slice(0, -1))).status).toBe(401);
    const basic = await app.http.get(stats.path).set('authorization', `Basic ${SECRETS.read}`);
    expect(basic.status).toBe(401);
  });

  it('force-releases a held lock: status free, old holder fenced out, audit line with the key name', async () => {
    const locks = app.app.get(LockService);
    const pool = app.app.get<Pool>(PG_POOL);
    const key = `lock:auth:held-${Date.now()}`;
    const handle = await locks.acquire(key, { ttlMs: 30_000, operation: 'stuck-job' });
    const audit = jest.spyOn(Logger.prototype, 'warn');
    try {
      const status = await app.http
        .get(`/api/v1/vector/lock-status/${key}`)
        .set('authorization', `Bearer ${SECRETS.read}`)
        .expect(200);
      expect(status.body).toMatchObject({
        lock_key: key,
        locked: true,
        fencing_token: handle.fence,
        holder: { pid: process.pid, operation: 'stuck-job' },
      });
      expect(status.body.ttl_ms).toBeGreaterThan(20_000);

      const released = await app.http
        .delete(`/api/v1/vector/lock/${key}`)
        .set('authorization', `Bearer ${SECRETS.admin}`)
        .expect(200);
      expect(released.body).toMatchObject({
        success: true,
        released: true,
        lock_key: key,
        previous_holder: { operation: 'stuck-job' },
      });
      expect(audit).toHaveBeenCalledWith(
        expect.objectContaining({
          msg: 'lock force-release',
          lock_key: key,
          by: 'boss',
          audit: true,
        }),
      );
      const after = await app.http
        .get(`/api/v1/vector/lock-status/${key}`)
        .set('authorization', `Bearer ${SECRETS.read}`)
        .expect(200);
      expect(after.body).toMatchObject({
        locked: false,
        ttl_ms: null,
        holder: null,
        fencing_token: handle.fence + 1,
      });
      await expect(
        new PostgresFencing().transaction(pool, handle, () => Promise.resolve()),
      ).rejects.toBeInstanceOf(StaleFenceError);

      await app.http
        .delete(`/api/v1/vector/lock/${key}`)
        .set('authorization', `Bearer ${SECRETS.admin}`)
        .expect(404);
    } finally {
      audit.mockRestore();
      await handle.release();
    }
  });

  it('refuses lock keys outside the lock prefix on both lock endpoints', async () => {
    for (const key of [
      'idem:vector:rebuild:x',
      'other-app:thing',
      '..%2F..%2Fetc%2Fpasswd',
      'lock:a%20b',
      'lock:x%23fence',
    ]) {
      const status = await app.http
        .get(`/api/v1/vector/lock-status/${key}`)
        .set('authorization', `Bearer ${SECRETS.read}`);
      expect(status.status).toBe(400);
      const release = await app.http
        .delete(`/api/v1/vector/lock/${key}`)
        .set('authorization', `Bearer ${SECRETS.admin}`);
      expect(release.status).toBe(400);
    }
  });

  it('serves Prometheus text with the lock and HTTP series', async () => {
    const response = await app.http.get('/metrics').expect(200);
    expect(response.headers['content-type']).toContain('text/plain');
    const lines = response.text.split('\n').filter((line) => line !== '');
    for (const line of lines) {
      expect(line).toMatch(
        /^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?([0-9.e+-]+|NaN|\+Inf|-Inf))$/,
      );
    }
    for (const series of [
      'lock_acquired_total',
      'lock_wait_seconds_bucket',
      'http_requests_total',
      'http_request_duration_seconds_bucket',
      'idempotency_singleflight_total',
      'process_cpu_user_seconds_total',
      'pg_pool_connections{state="idle"}',
      'redis_connection_up 1',
    ]) {
      expect(response.text).toContain(series);
    }
    expect(response.text).toMatch(
      /http_requests_total\{method="GET",route="\/api\/v1\/vector\/lock-status\/:lock_key",status="200"\} \d+/,
    );
  });
});

describe('Idempotency-Key on the real write endpoints, scoped by API key', () => {
  let app: TestApp;

  beforeAll(async () => {
    app = await startTestApp({ API_KEYS });
  });

  afterAll(async () => {
    await app.close();
  });

  it('replays a batch-upsert for the same key and caller, and runs it again for another caller', async () => {
    const namespace = `idem-${Date.now().toString(36)}`;
    const body = { items: [{ obj_ref: 'a', content: 'once' }], table_name: 'questions', namespace };
    const key = `upsert-${namespace}`;
    const first = await app.http
      .post('/api/v1/vector/batch-upsert')
      .set('authorization', `Bearer ${SECRETS.write}`)
      .set('idempotency-key', key)
      .send(body)
      .expect(200);
    const replay = await app.http
      .post('/api/v1/vector/batch-upsert')
      .set('authorization', `Bearer ${SECRETS.write}`)
      .set('idempotency-key', key)
      .send(body)
      .expect(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(first.body);
    const other = await app.http
      .post('/api/v1/vector/batch-upsert')
      .set('authorization', `Bearer ${SECRETS.admin}`)
      .set('idempotency-key', key)
      .send(body)
      .expect(200);
    expect(other.headers['idempotent-replayed']).toBeUndefined();
    expect(other.body.reused).toBe(1);
  });
});

describe('/metrics behind auth when configured', () => {
  it('needs a read key with METRICS_REQUIRE_AUTH=true', async () => {
    const app = await startTestApp({ API_KEYS, METRICS_REQUIRE_AUTH: 'true' });
    try {
      await app.http.get('/metrics').expect(401);
      await app.http.get('/metrics').set('authorization', `Bearer ${SECRETS.read}`).expect(200);
    } finally {
      await app.close();
    }
  });
});

describe('Auth at start-up', () => {
  it('refuses to start in production without API keys, and on malformed keys', async () => {
    const noKeys = await ServiceProcess.start('main.js', testEnv({ NODE_ENV: 'production' }))
      .exited;
    expect(noKeys.code).toBe(1);
    expect(noKeys.stderr + noKeys.stdout).toContain('API_KEYS is required in production');
    const weak = await ServiceProcess.start('main.js', testEnv({ API_KEYS: 'a:read:short' }))
      .exited;
    expect(weak.code).toBe(1);
    expect(weak.stderr + weak.stdout).toContain('at least 16 characters');
    expect(weak.stderr + weak.stdout).not.toContain('short');
  });
});
