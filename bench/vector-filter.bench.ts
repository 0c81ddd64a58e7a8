/**
 * Filtered search benchmark: the service over HTTP beside raw SQL on the same machine, over
 * 100k × 384 clustered vectors whose metadata has a known distribution (category: 10 values,
 * rare: 100 values, spread over the table; price a number). Reports recall@10 of filtered
 * searches against the exact filtered scan at 10% and 1% selectivity, and search QPS of the
 * service against the same raw SQL with the same SET LOCALs (iterative scan) at 10% (and, for
 * information, at 1%). Uses its own database (vector_filter_bench, cloned from vector_template).
 *   npm run bench:vector:filter   (BENCH_ROWS=100000, BENCH_SEARCH_ROUNDS=7 pairs of
 *                                  BENCH_SEARCH_SECONDS=3, each after BENCH_SEARCH_SETTLE_SECONDS=3)
 */
import { startBenchService } from './support/service-process';
import { clustered, seeded } from './support/vectors';
import { readFileSync } from 'node:fs';
import { Client, Pool } from 'pg';
import pgvector from 'pgvector/pg';
import { runMigrations } from '../src/database/migrator';
import { LeanHttpClient } from './support/lean-http-client';
import { median, table, verdict } from './support/stats';

const ADMIN_URL =
  process.env.TEST_DATABASE_URL ?? 'postgres://vector:vector@127.0.0.1:5432/vector_test';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';
const DATABASE = 'vector_filter_bench';
const ROWS = Number(process.env.BENCH_ROWS ?? 100_000);
const DIM = 384;
const K = 10;
const NAMESPACE = 'bench';
const EF_SEARCH = 100;
/** pgvector's default, which the service also uses (SEARCH_MAX_SCAN_TUPLES). */
const MAX_SCAN_TUPLES = 20_000;
const CONCURRENCY = 8;
const CLOCK_TICKS_PER_SECOND = 100;
const SEARCH_SECONDS = Number(process.env.BENCH_SEARCH_SECONDS ?? 3);
const SEARCH_ROUNDS = Number(process.env.BENCH_SEARCH_ROUNDS ?? 7);
const SETTLE_SECONDS = Number(process.env.BENCH_SEARCH_SETTLE_SECONDS ?? 3);

/** The two selectivities measured, as service filters and as the same condition in raw SQL. */
const FILTERS = [
  { name: '10%', filter: { category: 'c3' }, containment: '{"category":"c3"}' },
  { name: '1%', filter: { rare: 'r42' }, containment: '{"rare":"r42"}' },
];

/** Metadata of row i: independent of its vector; each category and rare value spread out. */
function metadataOf(i: number, random: () => number) {
  return {
    category: `c${i % 10}`,
    rare: `r${(i * 7 + Math.floor(i / 10)) % 100}`,
    price: Math.round(random() * 100_000) / 100,
    ...(i % 2 === 0 ? { tag: `t${i % 7}` } : {}),
  };
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
  const pool = new Pool({ connectionString: databaseUrl, max: 4 });

  // --- set-up, not measured: the namespace's slot 1 loaded straight into its partition ------
  const drawn = clustered(ROWS + 200, 42, DIM);
  const vectors = drawn.slice(0, ROWS);
  const queries = drawn.slice(ROWS);
  let service = await startService(databaseUrl);
  await service.client.post(
    '/batch-upsert',
    JSON.stringify({
      items: [{ obj_ref: 'seed', content: 'seed', embedding: vectors[0] }],
      table_name: 'questions',
      namespace: NAMESPACE,
    }),
  );
  await service.stop();
  const { rows: slotRows } = await pool.query<{ id: string }>(
    `SELECT id FROM vector_slots WHERE namespace = $1 AND slot = 1`,
    [NAMESPACE],
  );
  const slotId = Number(slotRows[0].id);
  const partition = `vec_questions_s${slotId}`;
  // Indexes dropped for the load; the service's start-up pass builds both again (HNSW, GIN).
  await pool.query(`DROP INDEX ${partition}_hnsw, ${partition}_meta`);
  await pool.query(`DELETE FROM ${partition}`);
  const random = seeded(7);
  for (let start = 0; start < ROWS; start += 5_000) {
    const slice = vectors.slice(start, start + 5_000);
    await pool.query(
      `INSERT INTO ${partition} (slot_id, obj_ref, content, content_hash, metadata, embedding, embedding_source)
       SELECT $1, r.o, r.c, sha256(convert_to(r.c, 'UTF8')), r.m, r.e::vector, 'client'
       FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::text[]) AS r(o, c, m, e)`,
      [
        slotId,
        slice.map((_, i) => `v${start + i}`),
        slice.map((_, i) => `item ${start + i}`),
        slice.map((_, i) => JSON.stringify(metadataOf(start + i, random))),
        slice.map((v) => pgvector.toSql(v) as string),
      ],
    );
  }
  service = await startService(databaseUrl);
  await waitForIndex(pool, `${partition}_hnsw`);
  await waitForIndex(pool, `${partition}_meta`);
  await pool.query(`ANALYZE ${partition}`);

  // --- the raw side: the statement a client would write, with the service's SET LOCALs ----
  const rawPool = new Pool({
    connectionString: databaseUrl,
    max: CONCURRENCY,
    application_name: 'bench-raw',
    options: `-c hnsw.ef_search=${EF_SEARCH}`,
  });
  const rawSql = `SELECT * FROM (
      SELECT obj_ref, item_id, content, metadata,
             embedding::vector(${DIM}) <=> $1::vector(${DIM}) AS distance
      FROM ${partition} WHERE metadata @> $2::jsonb
      ORDER BY embedding::vector(${DIM}) <=> $1::vector(${DIM}) LIMIT $3
    ) r ORDER BY distance`;
  const settings = `BEGIN; SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.max_scan_tuples = ${MAX_SCAN_TUPLES}`;
  // The same query with the settings made inside it, as the service does (one round trip).
  const rawOneStatement = `SELECT r.* FROM (
      SELECT concat(set_config('hnsw.iterative_scan', 'relaxed_order', true),
                    set_config('hnsw.max_scan_tuples', '${MAX_SCAN_TUPLES}', true)) AS settings
    ) scan CROSS JOIN LATERAL (
      SELECT obj_ref, item_id, content, metadata,
             embedding::vector(${DIM}) <=> $1::vector(${DIM}) AS distance
      FROM ${partition} WHERE scan.settings IS NOT NULL AND metadata @> $2::jsonb
      ORDER BY embedding::vector(${DIM}) <=> $1::vector(${DIM}) LIMIT $3
    ) r ORDER BY r.distance`;
  const queryTexts = queries.map((vector) => pgvector.toSql(vector) as string);

  const report: (string | number)[][] = [];
  const plans: string[] = [];
  const ratiosByFilter: string[] = [];
  for (const [index, { name, filter, containment }] of FILTERS.entries()) {
    const bodies = queries.map((vector) =>
      JSON.stringify({ table_name: 'questions', namespace: NAMESPACE, vector, k: K, filter }),
    );
    const viaHttp = (q: number) =>
      service.client
        .post('/search', bodies[q])
        .then((body) => (body.results as { obj_ref: string }[]).map((hit) => hit.obj_ref));
    // Raw SQL as pgvector's documentation writes it: BEGIN, SET LOCAL, the query, COMMIT.
    const viaSqlTransaction = async (q: number) => {
      const client = await rawPool.connect();
      try {
        await client.query(settings);
        const { rows } = await client.query<{ obj_ref: string }>(rawSql, [
          queryTexts[q],
          containment,
          K,
        ]);
        await client.query('COMMIT');
        return rows.map((row) => row.obj_ref);
      } finally {
        client.release();
      }
    };
    // Raw SQL with the settings inside the one statement, as the service sends it.
    const viaSql = (q: number) =>
      rawPool
        .query<{ obj_ref: string }>(rawOneStatement, [queryTexts[q], containment, K])
        .then(({ rows }) => rows.map((row) => row.obj_ref));
    plans.push(
      `${name}: ${await planOf(rawPool, settings, rawSql, [queryTexts[0], containment, K])}`,
    );
    await load(viaHttp, queries.length, index === 0 ? 10 : 3);
    await load(viaSql, queries.length, 2);
    await load(viaSqlTransaction, queries.length, 2);
    const rounds = index === 0 ? SEARCH_ROUNDS : Math.min(3, SEARCH_ROUNDS);
    const sides = [
      { one: viaHttp, application: 'vector-service', runs: [] as Run[] },
      { one: viaSql, application: 'bench-raw', runs: [] as Run[] },
      { one: viaSqlTransaction, application: 'bench-raw', runs: [] as Run[] },
    ];
    // Rounds of all three sides, the order rotating (this machine's speed drifts); each
    // measurement follows SETTLE_SECONDS of the same side's load, unmeasured.
    for (let round = 0; round < rounds; round++) {
      for (let turn = 0; turn < sides.length; turn++) {
        const side = sides[(round + turn) % sides.length];
        await load(side.one, queries.length, SETTLE_SECONDS);
        const meter: CpuMeter = {
          applicationName: side.application,
          admin: pool,
          servicePid: side.one === viaHttp ? service.pid : undefined,
        };
        side.runs.push(await load(side.one, queries.length, SEARCH_SECONDS, meter));
      }
    }
    const [httpRuns, sqlRuns, transactionRuns] = sides.map((side) => side.runs);
    const ratios = httpRuns.map((run, round) => run.qps / sqlRuns[round].qps);
    const ratio = median(ratios);
    const transactionRatio = median(
      httpRuns.map((run, round) => run.qps / transactionRuns[round].qps),
    );
    const cpuOf = (run: Run) => run.serviceCpuMs + run.postgresCpuMs + run.clientCpuMs;
    const cpuRatios = httpRuns.map((run, round) => cpuOf(sqlRuns[round]) / cpuOf(run));
    ratiosByFilter.push(
      `${name}: QPS ${ratios.map((r) => r.toFixed(2)).join(', ')}; CPU ${cpuRatios.map((r) => r.toFixed(2)).join(', ')}`,
    );
    const targeted = index === 0;
    report.push([
      `filtered search QPS at ${name} (k=${K}, ${CONCURRENCY} concurrent, ef_search ${EF_SEARCH})`,
      median(httpRuns.map((run) => run.qps)),
      median(sqlRuns.map((run) => run.qps)),
      ratio,
      targeted ? '≥ 0.7×' : '(information)',
      targeted ? verdict(ratio >= 0.7) : '',
    ]);
    report.push([
      `  raw SQL as BEGIN; SET LOCAL …; query; COMMIT instead`,
      median(httpRuns.map((run) => run.qps)),
      median(transactionRuns.map((run) => run.qps)),
      transactionRatio,
      targeted ? '≥ 0.7×' : '(information)',
      targeted ? verdict(transactionRatio >= 0.7) : '',
    ]);
    report.push([
      `  CPU ms per search at ${name}, all processes (ratio: raw / service)`,
      median(httpRuns.map(cpuOf)),
      median(sqlRuns.map(cpuOf)),
      median(cpuRatios),
      targeted ? '≥ 0.7×' : '(information)',
      targeted ? verdict(median(cpuRatios) >= 0.7) : '',
    ]);
    report.push([
      `  of which Postgres`,
      median(httpRuns.map((run) => run.postgresCpuMs)),
      median(sqlRuns.map((run) => run.postgresCpuMs)),
      Number.NaN,
      '',
      '',
    ]);
    report.push([
      `  of which the service process`,
      median(httpRuns.map((run) => run.serviceCpuMs)),
      Number.NaN,
      Number.NaN,
      '',
      '',
    ]);
    const exact = await exactFiltered(databaseUrl, partition, containment, queryTexts);
    const httpRecall = recall(httpRuns[0].results, exact, vectors, queries);
    const sqlRecall = recall(sqlRuns[0].results, exact, vectors, queries);
    report.push([
      `recall@${K} at ${name} vs exact filtered scan (ties count as hits)`,
      httpRecall,
      sqlRecall,
      Number.NaN,
      '≥ 0.9',
      verdict(httpRecall >= 0.9),
    ]);
    report.push([
      `results per search at ${name} (min over queries)`,
      Math.min(...httpRuns[0].results.map((refs) => refs.length)),
      Math.min(...sqlRuns[0].results.map((refs) => refs.length)),
      Number.NaN,
      `${K}`,
      verdict(httpRuns[0].results.every((refs) => refs.length === K)),
    ]);
  }
  await rawPool.end();

  console.log(
    `# Filtered search benchmark (${ROWS} × ${DIM}, clustered vectors; metadata category 10 values, rare 100 values)\n`,
  );
  console.log(table(['measure', 'service', 'raw SQL', 'ratio', 'target', 'verdict'], report));
  console.log(
    `\nraw SQL: the same query with the same settings, made inside the statement by set_config as the service does; the row below it sends them as BEGIN; SET LOCAL (pgvector's documented form), the query and COMMIT`,
  );
  console.log(
    'CPU ms per search: the service process, the Postgres backends of each side and this client (from /proc); where other work shares the cores, the CPU ratio is the steadier estimate of the QPS ratio on a machine of its own',
  );
  console.log(`service vs raw SQL per round: ${ratiosByFilter.join('; ')}`);
  console.log(`plans chosen by Postgres (raw statement, first query):\n  ${plans.join('\n  ')}`);

  await service.stop();
  await pool.end();
}

/** The scan nodes of a statement's plan, under the same settings. */
async function planOf(pool: Pool, settings: string, sql: string, values: unknown[]) {
  const client = await pool.connect();
  try {
    await client.query(settings);
    const { rows } = await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN ${sql}`, values);
    await client.query('COMMIT');
    return rows
      .map((row) => row['QUERY PLAN'])
      .filter((line) => /Scan/.test(line))
      .map((line) => line.trim().replace(/\s+\(cost=.*$/, ''))
      .join(' / ');
  } finally {
    client.release();
  }
}

/** The service (dist/main.js; `npm run build` first) in its own process. */
async function startService(databaseUrl: string) {
  const { base, child, stop } = await startBenchService(databaseUrl, REDIS_URL, {
    SEARCH_EF_SEARCH: String(EF_SEARCH),
    SEARCH_MAX_SCAN_TUPLES: String(MAX_SCAN_TUPLES),
  });
  const client = new LeanHttpClient(new URL(base), CONCURRENCY);
  return {
    client,
    pid: child.pid!,
    stop: async () => {
      client.close();
      await stop();
    },
  };
}

interface Run {
  qps: number;
  results: string[][];
  /** CPU milliseconds per search: the service process, its Postgres backends, this client. */
  serviceCpuMs: number;
  postgresCpuMs: number;
  clientCpuMs: number;
}

/** Cumulative CPU seconds of the processes serving one side (Linux /proc). */
interface CpuMeter {
  servicePid?: number;
  /** The application_name of the side's Postgres connections. */
  applicationName: string;
  admin: Pool;
}

const ticksOf = (pid: number): number => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return 0; // a process that has ended
  }
};

async function backendCpu(meter: CpuMeter): Promise<Map<number, number>> {
  const { rows } = await meter.admin.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
    [meter.applicationName],
  );
  return new Map(rows.map(({ pid }) => [pid, ticksOf(pid)]));
}

/**
 * `one(query)` from CONCURRENCY workers for `seconds`; the first answer per query is kept.
 * With a meter, also the CPU each search cost the service, Postgres and this client: on a
 * machine shared with other work, CPU per search holds up where QPS swings.
 */
async function load(
  one: (index: number) => Promise<string[]>,
  queryCount: number,
  seconds: number,
  meter?: CpuMeter,
): Promise<Run> {
  const results = new Array<string[]>(queryCount);
  let sent = 0;
  const serviceBefore = meter?.servicePid ? ticksOf(meter.servicePid) : 0;
  const backendsBefore = meter ? await backendCpu(meter) : new Map<number, number>();
  const clientBefore = process.cpuUsage();
  const begin = performance.now();
  const deadline = begin + seconds * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < deadline || sent < queryCount) {
        const index = sent++ % queryCount;
        const answer = await one(index);
        results[index] ??= answer;
      }
    }),
  );
  const elapsed = (performance.now() - begin) / 1000;
  const client = process.cpuUsage(clientBefore);
  let postgres = 0;
  for (const [pid, after] of meter ? await backendCpu(meter) : []) {
    postgres += after - (backendsBefore.get(pid) ?? 0);
  }
  const service = meter?.servicePid ? ticksOf(meter.servicePid) - serviceBefore : 0;
  return {
    qps: sent / elapsed,
    results,
    serviceCpuMs: (service * 1000) / sent,
    postgresCpuMs: meter ? (postgres * 1000) / sent : Number.NaN,
    clientCpuMs: (client.user + client.system) / 1000 / sent,
  };
}

/** Exact filtered top-k distances per query: no index scans (a bitmap or sequential scan). */
async function exactFiltered(
  databaseUrl: string,
  partition: string,
  containment: string,
  queryTexts: string[],
) {
  const client = new Client({ connectionString: databaseUrl });
  await client.connect();
  await client.query('SET enable_indexscan = off');
  const distances: number[][] = [];
  for (const text of queryTexts) {
    const { rows } = await client.query<{ d: number }>(
      `SELECT embedding::vector(${DIM}) <=> $1::vector(${DIM}) AS d FROM ${partition}
       WHERE metadata @> $2::jsonb ORDER BY d LIMIT ${K}`,
      [text, containment],
    );
    distances.push(rows.map((row) => row.d));
  }
  await client.end();
  return distances;
}

/** recall@k: the share of returned items as close as the exact k-th filtered neighbour. */
function recall(results: string[][], exact: number[][], vectors: number[][], queries: number[][]) {
  let hits = 0;
  results.forEach((refs, q) => {
    const last = exact[q][K - 1] + 1e-5;
    for (const ref of refs) {
      const vector = vectors[Number(ref.slice(1))];
      const cosine = vector.reduce((sum, x, j) => sum + x * queries[q][j], 0);
      if (1 - cosine <= last) hits++;
    }
  });
  return hits / (results.length * K);
}

async function waitForIndex(pool: Pool, index: string): Promise<void> {
  for (;;) {
    const { rows } = await pool.query(
      `SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1 AND i.indisvalid`,
      [index],
    );
    if (rows.length > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
