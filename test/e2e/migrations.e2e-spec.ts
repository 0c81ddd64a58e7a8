import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { TEMPLATE_DATABASE, TEST_DATABASE_URL } from '../support/env';
import { DIST, ServiceProcess } from '../support/service-process';

const REPLICAS = 4;

describe('migrations', () => {
  const admin = new Client({ connectionString: TEST_DATABASE_URL });
  const database = `vector_migrate_${process.pid}_${Date.now()}`;
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${database}`;

  beforeAll(async () => {
    await admin.connect();
    // A fresh database with pgvector (from the template) and no migrations applied yet.
    await admin.query(`CREATE DATABASE "${database}" TEMPLATE "${TEMPLATE_DATABASE}"`);
  });
  afterAll(async () => {
    await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin.end();
  });

  it(`${REPLICAS} replicas migrating one fresh database at once all succeed, each migration applied once`, async () => {
    const runs = Array.from({ length: REPLICAS }, () =>
      ServiceProcess.start('database/migrate.cli.js', {
        DATABASE_URL: url.href,
        REDIS_URL: 'redis://127.0.0.1:6379',
      }),
    );
    const results = await Promise.all(runs.map((run) => run.exited));
    for (const result of results) expect(result).toMatchObject({ code: 0, stderr: '' });

    const files = readdirSync(join(DIST, 'database/migrations')).filter((file) =>
      file.endsWith('.sql'),
    );
    const applied = results.filter((result) => /\d+ migration\(s\) applied/.test(result.stdout));
    expect(applied).toHaveLength(1); // one replica did the work; the others found nothing to do

    const db = new Client({ connectionString: url.href });
    await db.connect();
    try {
      const { rows } = await db.query<{ name: string; n: string }>(
        'SELECT name, count(*) AS n FROM pgmigrations GROUP BY name ORDER BY name',
      );
      expect(rows).toEqual(
        files.sort().map((file) => ({ name: file.replace(/\.sql$/, ''), n: '1' })),
      );
    } finally {
      await db.end();
    }
  });
});
