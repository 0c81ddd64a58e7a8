/**
 * Import benchmark: streamed NDJSON imports (POST /import) side by side with raw SQL in one run.
 *   1. BENCH_IMPORT_ROWS (100k) × 384 into an empty namespace, against the raw floor of the same
 *      rows: binary COPY into a new table, HNSW build with the service's settings, ANALYZE.
 *   2. 10k rows (half of them replacing stored ones) into that namespace's 100k slot, against a
 *      raw SQL upsert of the same rows into a table holding the same 100k rows and index.
 * Rounds alternate which side goes first; ratios are medians of the per-round ratios.
 *   npm run bench:vector:import   (BENCH_IMPORT_ROUNDS=3 large, BENCH_MERGE_ROUNDS=5 small)
 */
import { startBenchService } from './support/service-process';
import { clustered } from './support/vectors';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { Client, Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import pgvector from 'pgvector/pg';
import { runMigrations } from '../src/database/migrator';
import {
  COPY_COLUMNS,
  copyHeader,
  copyTrailer,
  encodeItem,
} from '../src/vector/repositories/binary-copy';
import { median, table, verdict } from './support/stats';

const ADMIN_URL =
  process.env.TEST_DATABASE_URL ?? 'postgres://vector:vector@127.0.0.1:5432/vector_test';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';
const ROWS = Number(process.env.BENCH_IMPORT_ROWS ?? 100_000);
const LARGE_ROUNDS = Number(process.env.BENCH_IMPORT_ROUNDS ?? 3);
const MERGE_ROWS = 10_000;
const MERGE_ROUNDS = Number(process.env.BENCH_MERGE_ROUNDS ?? 5);
const RAW_UPSERT_BATCH = 1_000;
const DIM = 384;

interface Row {
  obj_ref: string;
  content: string;
  embedding: number[];
}

/** The NDJSON body in ~4 MB chunks (one string of it all would be too long for V8). */
function ndjsonChunks(rows: Row[]): Buffer[] {
  const chunks: Buffer[] = [];
  for (let start = 0; start < rows.length; start += 1_000) {
    chunks.push(
      Buffer.from(
        rows
          .slice(start, start + 1_000)
          .map((row) => JSON.stringify(row) + '\n')
          .join(''),
      ),
    );
  }
  return chunks;
}

/** The same rows as binary COPY data, encoded as the service encodes them. */
function copyChunks(rows: Row[]): Buffer[] {
  const chunks = [copyHeader()];
  for (let start = 0; start < rows.length; start += 1_000) {
    chunks.push(
      Buffer.concat(
        rows.slice(start, start + 1_000).map((row) =>
          encodeItem(0, {
            obj_ref: row.obj_ref,
            item_id: null,
            content: row.content,
            content_hash: createHash('sha256').update(row.content).digest(),
            metadata: null,
            embedding: row.embedding,
            embedding_source: 'client',
            model: null,
          }),
        ),
      ),
    );
  }
  chunks.push(copyTrailer());
  return chunks;
}

/** POSTs the chunks as one streamed NDJSON body; resolves with the seconds until the answer. */
function postImport(base: string, namespace: string, chunks: Buffer[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = request(`${base}/import?table_name=questions&namespace=${namespace}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-ndjson' },
    });
    req.on('error', reject);
    req.on('response', (response) => {
      let text = '';
      response.on('data', (data: Buffer) => (text += data.toString()));
      response.on('end', () => {
        if (response.statusCode !== 200)
          reject(new Error(`import: ${response.statusCode} ${text}`));
        else resolve((performance.now() - started) / 1000);
      });
    });
    void pipeline(Readable.from(chunks), req).catch(reject);
  });
}

async function indexSettingsSql(client: Client): Promise<void> {
  const { rows } = await client.query<{ version: string }>(
    `SELECT extversion AS version FROM pg_extension WHERE extname = 'vector'`,
  );
  const [major, minor, patch] = rows[0].version.split('.').map(Number);
  await client.query(`SET maintenance_work_mem = '1GB'`);
  if (major * 10_000 + minor * 100 + patch < 802) {
    await client.query('SET max_parallel_maintenance_workers = 0');
  }
}

/** Binary COPY of the rows into a new table, HNSW build, ANALYZE: seconds. */
async function rawFloor(databaseUrl: string, name: string, chunks: Buffer[]): Promise<number> {
  const client = new Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query(`CREATE TABLE ${name} (LIKE vec_questions INCLUDING DEFAULTS)`);
    await indexSettingsSql(client);
    const started = performance.now();
    await pipeline(
      Readable.from(chunks),
      client.query(copyFrom(`COPY ${name} (${COPY_COLUMNS}) FROM STDIN (FORMAT binary)`)),
    );
    await client.query(
      `CREATE INDEX ON ${name} USING hnsw ((embedding::vector(${DIM})) vector_cosine_ops)
       WITH (m = 16, ef_construction = 64)`,
    );
    await client.query(`ANALYZE ${name}`);
    return (performance.now() - started) / 1000;
  } finally {
    await client.end();
  }
}

async function main() {
  const admin = new Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query('DROP DATABASE IF EXISTS vector_import_bench WITH (FORCE)');
  await admin.query('CREATE DATABASE vector_import_bench TEMPLATE vector_template');
  await admin.end();
  const url = new URL(ADMIN_URL);
  url.pathname = '/vector_import_bench';
  const databaseUrl = url.toString();
  await runMigrations(databaseUrl, { info: () => undefined });
  const service = await startService(databaseUrl);
  const pool = new Pool({ connectionString: databaseUrl, max: 4 });
  const report: (string | number)[][] = [];

  // --- 1. ROWS × 384 into an empty namespace ----------------------------------------------
  const vectors = clustered(ROWS, 42, DIM, 7);
  const rows: Row[] = vectors.map((embedding, i) => ({
    obj_ref: `v${i}`,
    content: `item ${i}`,
    embedding,
  }));
  const body = ndjsonChunks(rows);
  const copy = copyChunks(rows);
  // Warm-up (not measured): the service's first import, and the parent tables.
  await postImport(service.base, 'warm', ndjsonChunks(rows.slice(0, 100)));
  const importSeconds: number[] = [];
  const floorSeconds: number[] = [];
  for (let round = 0; round < LARGE_ROUNDS; round++) {
    const viaService = () =>
      postImport(service.base, `large-${round}`, body).then((s) => importSeconds.push(s));
    const viaSql = () =>
      rawFloor(databaseUrl, `raw_floor_${round}`, copy).then((s) => floorSeconds.push(s));
    if (round % 2 === 0) {
      await viaService();
      await viaSql();
    } else {
      await viaSql();
      await viaService();
    }
    console.error(
      `round ${round}: import ${importSeconds[round].toFixed(1)} s, raw floor ${floorSeconds[round].toFixed(1)} s`,
    );
  }
  const largeRatio = median(importSeconds.map((s, i) => s / floorSeconds[i]));
  report.push([
    `import ${ROWS} × ${DIM} into an empty namespace (s; ratio = service / raw floor)`,
    median(importSeconds),
    median(floorSeconds),
    largeRatio,
    '≤ 1.2×',
    verdict(largeRatio <= 1.2),
  ]);

  // --- 2. 10k rows into the 100k slot -----------------------------------------------------
  // The service's namespace large-0 and the raw table raw_floor_0 hold the same rows and index;
  // the raw side gets the primary key the slot has (setup, not measured).
  await pool.query('ALTER TABLE raw_floor_0 ADD PRIMARY KEY (slot_id, obj_ref)');
  // Every table just loaded (the service's slots and the raw tables alike) is vacuumed here,
  // unmeasured: otherwise autovacuum's insert-triggered pass (an HNSW index scan of each table)
  // lands in the middle of the rounds, on one side or the other.
  await pool.query('VACUUM ANALYZE');
  const rawUpsertSql = `INSERT INTO raw_floor_0 AS t
      (slot_id, obj_ref, content, content_hash, embedding, embedding_source)
    SELECT 0, r.o, r.c, sha256(convert_to(r.c, 'UTF8')), r.e, 'client'
    FROM unnest($1::text[], $2::text[], $3::vector[]) AS r(o, c, e)
    ON CONFLICT (slot_id, obj_ref) DO UPDATE SET content = EXCLUDED.content,
      content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding, updated_at = now()`;
  const mergeSeconds: number[] = [];
  const upsertSeconds: number[] = [];
  const fresh = clustered(MERGE_ROWS * MERGE_ROUNDS, 7, DIM, 7);
  for (let round = 0; round < MERGE_ROUNDS; round++) {
    // Half replace stored items (distinct ones each round), half are new.
    const batch: Row[] = fresh
      .slice(round * MERGE_ROWS, (round + 1) * MERGE_ROWS)
      .map((embedding, i) => ({
        obj_ref: i % 2 === 0 ? `v${round * MERGE_ROWS + i}` : `n${round}-${i}`,
        content: `merged ${round} ${i}`,
        embedding,
      }));
    const mergeBody = ndjsonChunks(batch);
    const viaService = () =>
      postImport(service.base, 'large-0', mergeBody).then((s) => mergeSeconds.push(s));
    const viaSql = async () => {
      const started = performance.now();
      for (let start = 0; start < batch.length; start += RAW_UPSERT_BATCH) {
        const slice = batch.slice(start, start + RAW_UPSERT_BATCH);
        await pool.query(rawUpsertSql, [
          slice.map((row) => row.obj_ref),
          slice.map((row) => row.content),
          slice.map((row) => pgvector.toSql(row.embedding) as string),
        ]);
      }
      upsertSeconds.push((performance.now() - started) / 1000);
    };
    if (round % 2 === 0) {
      await viaService();
      await viaSql();
    } else {
      await viaSql();
      await viaService();
    }
    console.error(
      `merge round ${round}: import ${mergeSeconds[round].toFixed(2)} s, raw upsert ${upsertSeconds[round].toFixed(2)} s`,
    );
  }
  // Throughput ratio: service rows/s over raw rows/s = raw seconds / service seconds.
  const mergeRatio = median(upsertSeconds.map((s, i) => s / mergeSeconds[i]));
  report.push([
    `import ${MERGE_ROWS / 1000}k rows into a ${ROWS / 1000}k slot (rows/s; ratio = service / raw)`,
    MERGE_ROWS / median(mergeSeconds),
    MERGE_ROWS / median(upsertSeconds),
    mergeRatio,
    '≥ 0.8×',
    verdict(mergeRatio >= 0.8),
  ]);
  const modes = await pool.query<{ mode: string; count: string }>(
    `SELECT mode, count(*) FROM vector_imports WHERE status = 'succeeded' GROUP BY mode ORDER BY mode`,
  );

  console.log(`# Import benchmark (${ROWS} × ${DIM}, clustered vectors, client embeddings)\n`);
  console.log(table(['measure', 'service', 'raw SQL', 'ratio', 'target', 'verdict'], report));
  console.log(
    `\nlarge: ${importSeconds.map((s) => s.toFixed(1)).join(', ')} s against a raw floor of ` +
      `${floorSeconds.map((s) => s.toFixed(1)).join(', ')} s (binary COPY into a new table, ` +
      'HNSW m 16 / ef_construction 64 / 1GB maintenance_work_mem, ANALYZE)',
  );
  console.log(
    `merge: ${mergeSeconds.map((s) => s.toFixed(2)).join(', ')} s against raw upserts of ` +
      `${upsertSeconds.map((s) => s.toFixed(2)).join(', ')} s ` +
      `(INSERT … ON CONFLICT DO UPDATE, ${RAW_UPSERT_BATCH} rows a statement)`,
  );
  console.log(`imports by mode: ${modes.rows.map((r) => `${r.mode} ${r.count}`).join(', ')}`);

  await service.stop();
  await pool.end();
}

/** The service as production runs it (dist/main.js, `npm run build` first) in its own process. */
async function startService(databaseUrl: string) {
  const { base, stop } = await startBenchService(databaseUrl, REDIS_URL);
  return {
    base,
    stop: async () => {
      await stop();
    },
  };
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
