import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { TestApp, startTestApp } from '../support/app';
import { FakeEmbeddingsServer } from '../support/fake-embeddings-server';
import { Sample, parseSamples, promtool, sampleSum } from '../support/prometheus-text';

/**
 * What `promtool check metrics` (2.42) says about prom-client's default metrics, which this
 * service does not name: three gauges named like counters (nodejs_active_handles_total,
 * nodejs_active_requests_total, nodejs_active_resources_total). Every other finding fails.
 */
const PROM_CLIENT_DEFAULT_FINDINGS =
  /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;

describe('Vector domain metrics at /metrics', () => {
  let fake: FakeEmbeddingsServer;
  let app: TestApp;
  let pool: Pool;

  beforeAll(async () => {
    fake = await FakeEmbeddingsServer.start(8);
    app = await startTestApp({
      LOG_LEVEL: 'error',
      EMBEDDING_PROVIDER: 'openai',
      EMBEDDING_API_URL: fake.url,
      EMBEDDING_MODEL: 'fake-model',
      EMBEDDING_DIMENSION: '8',
      EMBEDDING_MAX_RETRIES: '1',
    });
    pool = app.app.get<Pool>(PG_POOL);
  });

  afterAll(async () => {
    await app.close();
    await fake.close();
  });

  const scrape = async (): Promise<{ text: string; samples: Sample[] }> => {
    const response = await app.http.get('/metrics').expect(200);
    return { text: response.text, samples: parseSamples(response.text) };
  };

  const post = (path: string, body: object) => app.http.post(`/api/v1/vector/${path}`).send(body);

  it('counts upserts, deletes, searches, a rebuild and embedding requests by the right amounts', async () => {
    const namespace = `met-${randomBytes(3).toString('hex')}`;
    const before = (await scrape()).samples;
    const delta = (after: Sample[], name: string, labels: Record<string, string> = {}) =>
      sampleSum(after, name, labels) - sampleSum(before, name, labels);

    const items = Array.from({ length: 5 }, (_, i) => ({ obj_ref: `q${i}`, content: `text ${i}` }));
    await post('batch-upsert', { items, table_name: 'questions', namespace }).expect(200);
    await post('batch-upsert', {
      items: [{ obj_ref: 'p1', content: 'a pattern' }],
      table_name: 'patterns',
      namespace,
    }).expect(200);
    const deleted = await post('batch-delete', {
      obj_refs: ['q0', 'q1', 'missing'],
      table_name: 'questions',
      namespace,
    }).expect(200);
    expect(deleted.body).toMatchObject({ deleted: 2 });
    await post('search', { table_name: 'questions', namespace, query: 'text', k: 2 }).expect(200);
    await post('search', { table_name: 'questions', namespace, obj_ref: 'q2', k: 2 }).expect(200);
    await post('search', {
      table_name: 'questions',
      namespace,
      vector: Array.from({ length: 8 }, () => 0.5),
      k: 2,
      filter: { category: 'none' },
    }).expect(200);
    await post('rebuild-index', { namespace }).expect(200);
    // The provider answers 500 twice (one retry): the upsert fails and is not counted.
    fake.answer({ kind: 'status', status: 500 }, { kind: 'status', status: 500 });
    await post('batch-upsert', {
      items: [{ obj_ref: 'lost', content: 'never written' }],
      table_name: 'questions',
      namespace,
    }).expect(503);

    const { text, samples: after } = await scrape();
    expect(delta(after, 'vector_items_upserted_total', { table: 'questions' })).toBe(5);
    expect(delta(after, 'vector_items_upserted_total', { table: 'patterns' })).toBe(1);
    expect(delta(after, 'vector_items_deleted_total', { table: 'questions' })).toBe(2);
    expect(delta(after, 'vector_upsert_duration_seconds_count', { table: 'questions' })).toBe(1);
    expect(delta(after, 'vector_upsert_duration_seconds_count', { table: 'patterns' })).toBe(1);
    const searches = (kind: string, filtered: string) =>
      delta(after, 'vector_search_duration_seconds_count', {
        table: 'questions',
        kind,
        filtered,
      });
    expect(searches('query', 'false')).toBe(1);
    expect(searches('item', 'false')).toBe(1);
    expect(searches('vector', 'true')).toBe(1);
    expect(searches('vector', 'false')).toBe(0);
    expect(delta(after, 'vector_rebuilds_total', { outcome: 'succeeded' })).toBe(1);
    expect(delta(after, 'vector_rebuilds_total', { outcome: 'failed' })).toBe(0);
    for (const phase of ['preparing', 'loading', 'indexing', 'switching']) {
      expect(
        delta(after, 'vector_rebuild_phase_duration_seconds_count', {
          phase,
          outcome: 'succeeded',
        }),
      ).toBe(1);
    }
    expect(sampleSum(after, 'vector_rebuild_running')).toBe(0);
    const embedding = { provider: 'openai', model: 'fake-model' };
    // Two upserts and one search by query embedded; the third upsert's request failed.
    expect(delta(after, 'embedding_requests_total', { ...embedding, outcome: 'success' })).toBe(3);
    expect(delta(after, 'embedding_requests_total', { ...embedding, outcome: 'error' })).toBe(1);
    expect(delta(after, 'embedding_texts_total', embedding)).toBe(5 + 1 + 1 + 1);
    expect(delta(after, 'embedding_request_duration_seconds_count', embedding)).toBe(4);
    // Never a namespace or an obj_ref in a label.
    expect(text).not.toContain(namespace);
    expect(text).not.toContain('q2');
  });

  it('counts a rebuild that failed, with the phases it went through', async () => {
    const namespace = `met-${randomBytes(3).toString('hex')}`;
    const items = Array.from({ length: 3 }, (_, i) => ({ obj_ref: `f${i}`, content: `fail ${i}` }));
    await post('batch-upsert', { items, table_name: 'questions', namespace }).expect(200);
    // Rows of another model must be embedded again by the rebuild; the provider then fails.
    const { rows } = await pool.query<{ id: string }>(
      'SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1',
      [namespace],
    );
    await pool.query(`UPDATE vec_questions_s${Number(rows[0].id)} SET model = 'older-model'`);
    const before = (await scrape()).samples;
    fake.answer({ kind: 'status', status: 500 }, { kind: 'status', status: 500 });
    const rebuild = await post('rebuild-index', { namespace });
    expect(rebuild.status).toBeGreaterThanOrEqual(500);

    const after = (await scrape()).samples;
    const delta = (name: string, labels: Record<string, string>) =>
      sampleSum(after, name, labels) - sampleSum(before, name, labels);
    expect(delta('vector_rebuilds_total', { outcome: 'failed' })).toBe(1);
    expect(delta('vector_rebuilds_total', { outcome: 'succeeded' })).toBe(0);
    const phase = (name: string) =>
      delta('vector_rebuild_phase_duration_seconds_count', { phase: name, outcome: 'failed' });
    expect([phase('preparing'), phase('loading'), phase('indexing')]).toEqual([1, 1, 0]);
    expect(sampleSum(after, 'vector_rebuild_running')).toBe(0);
    expect(
      delta('embedding_requests_total', {
        provider: 'openai',
        model: 'fake-model',
        outcome: 'error',
      }),
    ).toBe(1);
  });

  it('reports active-slot rows from the catalog estimate', async () => {
    const namespace = `met-${randomBytes(3).toString('hex')}`;
    const items = Array.from({ length: 40 }, (_, i) => ({ obj_ref: `r${i}`, content: `row ${i}` }));
    await post('batch-upsert', { items, table_name: 'questions', namespace }).expect(200);
    // reltuples is what ANALYZE saw: analyse every questions partition, as autovacuum would.
    const { rows } = await pool.query<{ relname: string }>(
      `SELECT relname FROM pg_class WHERE relname ~ '^vec_questions_s[0-9]+$' AND relkind = 'r'`,
    );
    for (const { relname } of rows) await pool.query(`ANALYZE "${relname}"`);
    // A fresh app: its estimate cache is empty, so the first scrape reads the catalog now.
    const fresh = await startTestApp({ LOG_LEVEL: 'error' });
    try {
      const response = await fresh.http.get('/metrics').expect(200);
      const estimate = sampleSum(parseSamples(response.text), 'vector_active_slot_rows', {
        table: 'questions',
      });
      expect(estimate).toBeGreaterThanOrEqual(40);
      expect(response.text).toMatch(/^vector_active_slot_rows\{table="patterns"\} \d+$/m);
    } finally {
      await fresh.close();
    }
  });

  it('passes promtool check metrics, prom-client defaults aside', async () => {
    const { text } = await scrape();
    const { output } = promtool(['check', 'metrics'], text);
    // Guards the filter below: prom-client's defaults do draw findings, so promtool did run.
    expect(output).toMatch(/^nodejs_active_handles_total /m);
    const findings = output
      .split('\n')
      .filter((line) => line.trim() !== '')
      .filter((line) => !PROM_CLIENT_DEFAULT_FINDINGS.test(line));
    expect(findings).toEqual([]);
  });
});
