/**
 * Many namespaces: creation rate, statistics page time and catalog size at 1k and 5k one-item
 * namespaces, created over HTTP batch-upsert like clients do (BENCH_NS_CONCURRENCY requests in
 * flight). Uses its own fresh database (cloned from vector_template), dropped at the end.
 *   npm run bench:namespaces   (BENCH_NS_CHECKPOINTS=1000,5000  BENCH_NS_CONCURRENCY=3
 *                               BENCH_NS_PAGE_SAMPLES=15)
 */
import { startBenchService } from './support/service-process';
import { randomBytes } from 'node:crypto';
import { Client, Pool } from 'pg';
import { runMigrations } from '../src/database/migrator';
import { LeanHttpClient } from './support/lean-http-client';
import { median, percentile, table } from './support/stats';

const ADMIN_URL =
  process.env.TEST_DATABASE_URL ?? 'postgres://vector:vector@127.0.0.1:5432/vector_test';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';
const CHECKPOINTS = (process.env.BENCH_NS_CHECKPOINTS ?? '1000,5000')
  .split(',')
  .map(Number)
  .sort((a, b) => a - b);
const CONCURRENCY = Number(process.env.BENCH_NS_CONCURRENCY ?? 3);
const PAGE_SAMPLES = Number(process.env.BENCH_NS_PAGE_SAMPLES ?? 15);
const BLOCK = 1000;

const nameOf = (i: number) => `ns-${String(i).padStart(6, '0')}`;

interface StatisticsPage {
  namespaces: unknown[];
  next_cursor: string | null;
}

async function main() {
  const database = `vector_bench_ns_${randomBytes(3).toString('hex')}`;
  const admin = new Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE "${database}" TEMPLATE vector_template`);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${database}`;
  const databaseUrl = url.toString();
  await runMigrations(databaseUrl, { info: () => undefined });
  const service = await startService(databaseUrl);
  const pool = new Pool({ connectionString: databaseUrl, max: 2 });
  try {
    const empty = await catalog(pool);
    const creation: (string | number)[][] = [];
    const pages: (string | number)[][] = [];
    const sizes: (string | number)[][] = [];
    let created = 0;
    for (const checkpoint of CHECKPOINTS) {
      while (created < checkpoint) {
        const blockEnd = Math.min(checkpoint, (Math.floor(created / BLOCK) + 1) * BLOCK);
        const started = performance.now();
        await createNamespaces(service.client, created, blockEnd);
        const seconds = (performance.now() - started) / 1000;
        creation.push([`${created + 1}–${blockEnd}`, (blockEnd - created) / seconds]);
        console.error(`created ${blockEnd} namespaces (${format(seconds)} s for the last block)`);
        created = blockEnd;
      }
      pages.push(...(await pageTimes(service.base, checkpoint)));
      const now = await catalog(pool);
      sizes.push([
        checkpoint,
        now.relations,
        (now.relations - empty.relations) / checkpoint,
        now.bytes / 2 ** 20,
        (now.bytes - empty.bytes) / checkpoint / 1024,
      ]);
    }
    console.log('\n### Namespace creation (one-item batch-upsert, new namespace each)\n');
    console.log(table(['namespaces', 'created per second'], creation));
    console.log('\n### GET /statistics\n');
    console.log(table(['namespaces', 'request', 'p50 ms', 'p90 ms', 'body KiB'], pages));
    console.log('\n### Catalog\n');
    console.log(
      table(
        [
          'namespaces',
          'relations (pg_class)',
          'relations per namespace',
          'database MiB',
          'KiB per namespace',
        ],
        sizes,
      ),
    );
  } finally {
    await pool.end();
    await service.stop();
    await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin.end();
  }
}

/** Namespaces [from, to), one item each, CONCURRENCY upserts in flight. */
async function createNamespaces(client: LeanHttpClient, from: number, to: number) {
  let next = from;
  const worker = async () => {
    for (let i = next++; i < to; i = next++) {
      await client.post(
        '/batch-upsert',
        JSON.stringify({
          namespace: nameOf(i),
          table_name: 'questions',
          items: [{ obj_ref: 'only', content: `the one item of namespace ${i}` }],
        }),
      );
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

async function timedGet(base: string, query: string) {
  const started = performance.now();
  const response = await fetch(`${base}/statistics?${query}`);
  const text = await response.text();
  const ms = performance.now() - started;
  if (!response.ok) throw new Error(`statistics answered ${response.status}: ${text}`);
  return { ms, bytes: Buffer.byteLength(text), page: JSON.parse(text) as StatisticsPage };
}

/** First page, a middle page (p50 over PAGE_SAMPLES each), and a walk over every page. */
async function pageTimes(base: string, namespaces: number): Promise<(string | number)[][]> {
  const rows: (string | number)[][] = [];
  const sample = async (label: string, query: string) => {
    const times: number[] = [];
    let bytes = 0;
    for (let i = 0; i < PAGE_SAMPLES; i++) {
      const answer = await timedGet(base, query);
      times.push(answer.ms);
      bytes = answer.bytes;
    }
    rows.push([namespaces, label, median(times), percentile(times, 90), bytes / 1024]);
  };
  // Walk with limit=100, keeping the cursor of the middle page.
  let cursor: string | null = null;
  let middle: string | null = null;
  let walkMs = 0;
  let walkBytes = 0;
  let count = 0;
  do {
    const answer = await timedGet(base, `limit=100${cursor ? `&cursor=${cursor}` : ''}`);
    walkMs += answer.ms;
    walkBytes += answer.bytes;
    count++;
    cursor = answer.page.next_cursor;
    if (count === Math.floor(namespaces / 200)) middle = cursor;
  } while (cursor);
  await sample('first page, limit=100', 'limit=100');
  if (middle) await sample('middle page, limit=100', `limit=100&cursor=${middle}`);
  rows.push([
    namespaces,
    `all ${count} pages of 100, in turn (total)`,
    walkMs,
    walkMs,
    walkBytes / 1024,
  ]);
  let walk1000 = 0;
  let bytes1000 = 0;
  cursor = null;
  do {
    const answer = await timedGet(base, `limit=1000${cursor ? `&cursor=${cursor}` : ''}`);
    walk1000 += answer.ms;
    bytes1000 += answer.bytes;
    cursor = answer.page.next_cursor;
  } while (cursor);
  rows.push([
    namespaces,
    'all pages of 1000, in turn (total)',
    walk1000,
    walk1000,
    bytes1000 / 1024,
  ]);
  return rows;
}

async function catalog(pool: Pool) {
  const { rows } = await pool.query<{ relations: number; bytes: string }>(
    `SELECT (SELECT count(*)::int FROM pg_class) AS relations,
            pg_database_size(current_database()) AS bytes`,
  );
  return { relations: rows[0].relations, bytes: Number(rows[0].bytes) };
}

async function startService(databaseUrl: string) {
  const { base, stop } = await startBenchService(databaseUrl, REDIS_URL, {
    RATE_LIMIT_WRITE_PER_MINUTE: '100000000',
  });
  const client = new LeanHttpClient(new URL(base), CONCURRENCY);
  return {
    base,
    client,
    stop: async () => {
      client.close();
      await stop();
    },
  };
}

function format(value: number): string {
  return value.toFixed(1);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
