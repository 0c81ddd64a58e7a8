import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestApp, startTestApp } from '../support/app';
import { promtool } from '../support/prometheus-text';

const DIR = join(__dirname, '..', '..', 'deploy', 'observability');
/** Series Prometheus itself records for every target; the service does not export them. */
const PROMETHEUS_SERIES = new Set(['up']);
const PROMQL_WORDS = new Set([
  'and',
  'or',
  'unless',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'offset',
  'inf',
  'nan',
]);

/**
 * The metric names a PromQL expression reads: identifiers left once strings, label matchers,
 * ranges, grouping clauses and Grafana variables are taken out, and that are not functions
 * (followed by a parenthesis) or keywords. Enough for the expressions of deploy/observability;
 * not a PromQL parser.
 */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    // Grafana's label_values(metric, label): the second argument is a label.
    .replace(/\blabel_values\(([^,)]*),[^)]*\)/g, 'label_values($1)')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ');
  const names = new Set<string>();
  for (const match of bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\(?))/g)) {
    if (match[1] === '(' || PROMQL_WORDS.has(match[0].toLowerCase())) continue;
    names.add(match[0]);
  }
  return [...names];
}

/** Every `expr` (alert rules) or `expr`/`query`/`definition` string (dashboard), recursively. */
function expressions(node: unknown, keys: string[], found: string[] = []): string[] {
  if (Array.isArray(node)) {
    for (const item of node) expressions(item, keys, found);
  } else if (node && typeof node === 'object') {
    for (const [key, value] of Object.entries(node)) {
      if (keys.includes(key) && typeof value === 'string') found.push(value);
      else expressions(value, keys, found);
    }
  }
  return found;
}

/** Metric families of a scrape and the sample names each may show (histograms: three). */
function exportedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(name);
    if (type === 'histogram' || type === 'summary') {
      for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${name}${suffix}`);
    }
  }
  return names;
}

describe('deploy/observability: alert rules and dashboard', () => {
  let app: TestApp;
  let scraped: string;

  beforeAll(async () => {
    app = await startTestApp({ LOG_LEVEL: 'error' });
    scraped = (await app.http.get('/metrics').expect(200)).text;
  });

  afterAll(async () => {
    await app.close();
  });

  it('alerts.yml passes promtool check rules', () => {
    const { status, output } = promtool(['check', 'rules', join(DIR, 'alerts.yml')]);
    expect(output).toContain('SUCCESS');
    expect(status).toBe(0);
  });

  it('alerts.test.yml passes promtool test rules (each alert firing and quiet)', () => {
    const { status, output } = promtool(['test', 'rules', join(DIR, 'alerts.test.yml')]);
    expect(output).toContain('SUCCESS');
    expect(status).toBe(0);
    // Every alert of the rules is exercised by the unit tests.
    const rules = readFileSync(join(DIR, 'alerts.yml'), 'utf8');
    const tests = readFileSync(join(DIR, 'alerts.test.yml'), 'utf8');
    const alerts = [...rules.matchAll(/^\s*- alert: (\w+)$/gm)].map((m) => m[1]);
    expect(alerts.length).toBeGreaterThanOrEqual(10);
    for (const alert of alerts) expect(tests).toContain(`alertname: ${alert}\n`);
  });

  it('reads only metrics the service exports (or Prometheus records)', () => {
    const exported = exportedNames(scraped);
    const rules = readFileSync(join(DIR, 'alerts.yml'), 'utf8');
    const ruleExprs = [
      ...rules.matchAll(/^\s*expr: (?:>-\n)?([\s\S]*?)\n\s*(?:for|labels):/gm),
    ].map((m) => m[1]);
    const dashboard = JSON.parse(readFileSync(join(DIR, 'dashboard.json'), 'utf8')) as unknown;
    const dashboardExprs = expressions(dashboard, ['expr', 'definition']);
    expect(ruleExprs.length).toBeGreaterThanOrEqual(10);
    expect(dashboardExprs.length).toBeGreaterThanOrEqual(25);
    const used = new Set([...ruleExprs, ...dashboardExprs].flatMap(metricNames));
    const unknown = [...used].filter((name) => !exported.has(name) && !PROMETHEUS_SERIES.has(name));
    expect(unknown).toEqual([]);
    // The extraction itself works: the domain metrics are among the names found.
    for (const name of [
      'http_requests_total',
      'vector_items_upserted_total',
      'vector_search_duration_seconds_bucket',
      'vector_rebuilds_total',
      'vector_active_slot_rows',
      'embedding_requests_total',
      'lock_held_age_seconds',
      'idempotency_singleflight_total',
      'pg_pool_connections',
      'redis_connection_up',
      'up',
    ]) {
      expect(used).toContain(name);
    }
    expect(
      metricNames('sum by (le) (rate(x_bucket{job=~"$job", a="b c"}[5m])) > 0 and on (i) y == 1'),
    ).toEqual(['x_bucket', 'y']);
  });

  it('dashboard.json is a Grafana dashboard with a data-source variable and unique panel ids', () => {
    const dashboard = JSON.parse(readFileSync(join(DIR, 'dashboard.json'), 'utf8')) as {
      schemaVersion: number;
      uid: string;
      templating: { list: { name: string; type: string }[] };
      panels: { id: number; type: string; datasource?: { uid: string }; targets?: unknown[] }[];
    };
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.templating.list).toContainEqual(
      expect.objectContaining({ name: 'datasource', type: 'datasource' }),
    );
    const ids = dashboard.panels.map((panel) => panel.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
      expect(panel.datasource?.uid).toBe('${datasource}');
      expect(panel.targets?.length).toBeGreaterThan(0);
    }
  });
});
