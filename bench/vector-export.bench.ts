/**
 * Export benchmark: the NDJSON export of a 100k × 384 namespace over HTTP, side by side with raw
 * SQL reading the same rows in the same run, and the service's resident memory during it.
 *   npm run bench:vector:export   (BENCH_EXPORT_ROWS=100000, BENCH_EXPORT_RUNS=3 per variant)
 * The service runs as production does (dist/main.js) in its own process; the client counts lines
 * without parsing them. Uses its own database, vector_bench_export (cloned from vector_template).
 *
 * Baselines, both reading the partition in this process with pg, in the same runs (each run
 * measures the service, then keyset, then COPY; the ratio is the median of per-run ratios, which
 * holds up better than a ratio of medians on a machine whose speed drifts):
 * - keyset: keyset pages of 1000 rows of the columns (metadata and embedding as text), what a
 *   client of pg reading the slot itself would do;
 * - COPY: the same NDJSON lines the service sends (the same SQL expression), in one
 *   `COPY … TO STDOUT` of the whole slot: Postgres's own cost of producing those bytes.
 */
import { startBenchService } from './support/service-process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { IncomingMessage, get } from 'node:http';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Client } from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { runMigrations } from '../src/database/migrator';
import { ndjsonLineSql } from '../src/vector/repositories/item-reads.repository';
import { median, table, verdict } from './support/stats';

const ADMIN_URL =
  process.env.TEST_DATABASE_URL ?? 'postgres://vector:vector@127.0.0.1:5432/vector_test';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';
const ROWS = Number(process.env.BENCH_EXPORT_ROWS ?? 100_000);
const RUNS = Number(process.env.BENCH_EXPORT_RUNS ?? 3);
const DIM = 384;
const NAMESPACE = 'export';
const DATABASE = 'vector_bench_export';
const PAGE = 1000;
const RSS_SAMPLE_MS = 20;

interface ExportRun {
  rows: number;
  seconds: number;
  /** Peak RSS during the export minus RSS just before it, MB. */
  rssGrowthMb: number;
  bytes: number;
}

async function main() {
  const admin = new Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${DATABASE} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${DATABASE} TEMPLATE vector_template`);
  await admin.end();
  const url = new URL(ADMIN_URL);
  url.pathname = `/${DATABASE}`;
  const databaseUrl = url.toString();
  await runMigrations(databaseUrl, { info: () => undefined });

  const service = await startService(databaseUrl);
  const db = new Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    // The namespace and its slot through the API, then the rows straight into the partition
    // (setup, not measured): 100k upserts through an HNSW index would take many minutes.
    await service.post('/batch-upsert', {
      items: [{ obj_ref: 'seed', content: 'seed', embedding: unit(0) }],
      table_name: 'questions',
      namespace: NAMESPACE,
    });
    const { rows: slotRows } = await db.query<{ id: string }>(
      `SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1`,
      [NAMESPACE],
    );
    const slotId = Number(slotRows[0].id);
    const partition = `vec_questions_s${slotId}`;
    const seedStarted = performance.now();
    await db.query(`DROP INDEX ${partition}_hnsw`);
    for (let start = 1; start <= ROWS; start += 10_000) {
      const end = Math.min(ROWS, start + 9_999);
      // Random float4 components: pgvector prints ~10 characters for each, as real data has.
      await db.query(
        `INSERT INTO ${partition} (slot_id, obj_ref, item_id, content, content_hash, metadata,
                                   embedding, embedding_source)
         SELECT $1, 'v' || lpad(g::text, 7, '0'), g::text, 'exported item number ' || g,
                sha256(convert_to('exported item number ' || g, 'UTF8')),
                jsonb_build_object('n', g, 'tag', 'bench'),
                (SELECT array_agg(random() - 0.5)::real[] FROM generate_series(1, ${DIM}) WHERE g > 0)::vector,
                'client'
         FROM generate_series($2::int, $3::int) g`,
        [slotId, start, end],
      );
    }
    await db.query(`ANALYZE ${partition}`);
    const total = ROWS + 1;
    console.log(
      `seeded ${ROWS} × ${DIM} rows in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`,
    );

    const report: (string | number)[][] = [];
    for (const withEmbeddings of [false, true]) {
      const label = withEmbeddings ? 'with embeddings' : 'without embeddings';
      // One unmeasured export first: the service's JIT and heap settle on the first one.
      await exportOnce(service, withEmbeddings);
      const httpRuns: ExportRun[] = [];
      const keysetRuns: number[] = [];
      const copyRuns: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        const http = await exportOnce(service, withEmbeddings);
        if (http.rows !== total) throw new Error(`exported ${http.rows} rows, expected ${total}`);
        httpRuns.push(http);
        keysetRuns.push(await rawKeyset(db, partition, slotId, withEmbeddings, total));
        copyRuns.push(await rawCopy(databaseUrl, partition, slotId, withEmbeddings, total));
      }
      const httpRates = httpRuns.map((run) => run.rows / run.seconds);
      const httpRate = median(httpRates);
      const keysetRate = median(keysetRuns);
      const copyRate = median(copyRuns);
      const copyRatio = median(httpRates.map((rate, i) => rate / copyRuns[i]));
      const rss = median(httpRuns.map((run) => run.rssGrowthMb));
      const megabytes = median(httpRuns.map((run) => run.bytes)) / 1e6;
      report.push([
        `NDJSON export rows/s, ${label} (${megabytes.toFixed(0)} MB)`,
        httpRate,
        keysetRate,
        copyRate,
        copyRatio,
        '≥ 20000',
        verdict(httpRate >= 20_000),
      ]);
      report.push([
        `service RSS growth during it (MB), ${label}`,
        rss,
        '',
        '',
        '',
        '< 50',
        verdict(rss < 50),
      ]);
      console.log(
        `${label}: rows/s per run: service ${httpRates.map(Math.round).join(', ')}; ` +
          `keyset ${keysetRuns.map(Math.round).join(', ')}; COPY ${copyRuns.map(Math.round).join(', ')}; ` +
          `RSS growth MB ${httpRuns.map((run) => run.rssGrowthMb.toFixed(1)).join(', ')}`,
      );
    }
    console.log(
      `\nExport of ${total} × ${DIM} rows, medians of ${RUNS} runs (after one unmeasured run each)\n`,
    );
    console.log(
      table(
        [
          'measure',
          'service',
          'raw keyset (columns)',
          'raw COPY (same lines)',
          'service / COPY (paired)',
          'target',
          'verdict',
        ],
        report,
      ),
    );
  } finally {
    await db.end();
    await service.stop();
  }
}

/** A unit vector that is not all zeros. */
function unit(seed: number): number[] {
  return Array.from({ length: DIM }, (_, i) => (i === seed % DIM ? 1 : 0.01));
}

/** Streams the whole namespace as NDJSON, counting lines, sampling the service's RSS. */
async function exportOnce(
  service: Awaited<ReturnType<typeof startService>>,
  withEmbeddings: boolean,
): Promise<ExportRun> {
  const before = service.rssMb();
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, service.rssMb())), RSS_SAMPLE_MS);
  const started = performance.now();
  const request = get(
    `${service.base}/items?table_name=questions&namespace=${NAMESPACE}&include_embeddings=${withEmbeddings}`,
    { headers: { accept: 'application/x-ndjson' }, agent: false },
  );
  const [response] = (await once(request, 'response')) as [IncomingMessage];
  if (response.statusCode !== 200) throw new Error(`export answered ${response.statusCode}`);
  let rows = 0;
  let bytes = 0;
  for await (const chunk of response as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, at + 1)) rows++;
  }
  const seconds = (performance.now() - started) / 1000;
  clearInterval(sampler);
  peak = Math.max(peak, service.rssMb());
  return { rows, seconds, rssGrowthMb: peak - before, bytes };
}

/** rows/s of the service's page statement run directly: keyset pages of PAGE rows. */
async function rawKeyset(
  db: Client,
  partition: string,
  slotId: number,
  withEmbeddings: boolean,
  total: number,
): Promise<number> {
  const started = performance.now();
  let after = '';
  let rows = 0;
  for (;;) {
    const page = await db.query<{ obj_ref: string }>(
      `SELECT obj_ref, item_id, content, metadata::text AS metadata,
              CASE WHEN $3::boolean THEN embedding::text END AS embedding
       FROM ${partition} WHERE slot_id = $1 AND obj_ref > $2 ORDER BY obj_ref LIMIT ${PAGE}`,
      [slotId, after, withEmbeddings],
    );
    rows += page.rows.length;
    if (page.rows.length < PAGE) break;
    after = page.rows[page.rows.length - 1].obj_ref;
  }
  if (rows !== total) throw new Error(`keyset read ${rows} rows, expected ${total}`);
  return rows / ((performance.now() - started) / 1000);
}

/** rows/s of COPY of the service's NDJSON lines (same SQL, one statement), bytes discarded. */
async function rawCopy(
  databaseUrl: string,
  partition: string,
  slotId: number,
  withEmbeddings: boolean,
  total: number,
): Promise<number> {
  const client = new Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    let rows = 0;
    const started = performance.now();
    await pipeline(
      client.query(
        copyTo(
          `COPY (SELECT ${ndjsonLineSql(withEmbeddings)} FROM ${partition}
                 WHERE slot_id = ${slotId} ORDER BY obj_ref)
           TO STDOUT (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')`,
        ),
      ),
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, at + 1)) rows++;
          done();
        },
      }),
    );
    if (rows !== total) throw new Error(`COPY read ${rows} rows, expected ${total}`);
    return rows / ((performance.now() - started) / 1000);
  } finally {
    await client.end();
  }
}

/** The built service (dist/main.js, `npm run build` first) in its own process. */
async function startService(databaseUrl: string) {
  const { base, child, stop } = await startBenchService(databaseUrl, REDIS_URL);
  return {
    base,
    post: async (path: string, body: object) => {
      const response = await fetch(`${base}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!response.ok) throw new Error(`${path} answered ${response.status}`);
      return response.json();
    },
    /** Resident set size of the service process, MB (Linux: /proc/<pid>/status VmRSS). */
    rssMb: () => {
      const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      return Number(match![1]) / 1024;
    },
    stop: async () => {
      await stop();
    },
  };
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
