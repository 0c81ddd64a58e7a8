import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { envSchema, validateEnv } from '../../src/config/env.schema';

/**
 * The configuration reference in docs/operations.md must list exactly the schema's variables,
 * with the schema's defaults: a variable added, removed or re-defaulted in the schema fails here
 * until the runbook says so too.
 */
const DOC = join(__dirname, '../../docs/operations.md');
const SECTION = '## Configuration reference';

interface ReferenceRow {
  name: string;
  /** The documented default: a value, `required` or `unset`. */
  default: string;
}

/** The rows of the first markdown table after the section heading whose first cell is `NAME`. */
function referenceRows(markdown: string): ReferenceRow[] {
  const start = markdown.indexOf(SECTION);
  if (start < 0) throw new Error(`${SECTION} not found in docs/operations.md`);
  const rest = markdown.slice(start + SECTION.length);
  const end = rest.search(/^## /m);
  const section = end < 0 ? rest : rest.slice(0, end);
  const rows: ReferenceRow[] = [];
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((cell) => cell.trim());
    // `| `NAME` | `default` | … |` splits into ['', '`NAME`', '`default`', …, ''].
    const name = /^`([A-Z][A-Z0-9_]*)`$/.exec(cells[1] ?? '')?.[1];
    if (!name) continue;
    const value = /^`(.*)`$/.exec(cells[2] ?? '')?.[1];
    if (value === undefined) throw new Error(`${name}: the default cell must be one code span`);
    rows.push({ name, default: value });
  }
  return rows;
}

// The smallest valid configuration: everything else takes its default.
const REQUIRED = {
  DATABASE_URL: 'postgres://user@localhost:5432/db',
  REDIS_URL: 'redis://localhost:6379',
};
const schemaNames = Object.keys(envSchema.shape);
const withDefaults = validateEnv(REQUIRED) as Record<string, unknown>;

describe('configuration reference (docs/operations.md)', () => {
  const rows = referenceRows(readFileSync(DOC, 'utf8'));
  const documented = rows.map((row) => row.name);

  it('documents every variable of the schema', () => {
    expect(schemaNames.filter((name) => !documented.includes(name))).toEqual([]);
  });

  it('documents no variable the schema does not have', () => {
    expect(documented.filter((name) => !schemaNames.includes(name))).toEqual([]);
  });

  it('documents each variable once', () => {
    expect(documented.filter((name, i) => documented.indexOf(name) !== i)).toEqual([]);
  });

  it.each(rows.map((row) => [row.name, row.default]))(
    '%s: the documented default %p is the schema default',
    (name, documentedDefault) => {
      if (documentedDefault === 'required') {
        const others: Record<string, string> = { ...REQUIRED };
        delete others[name];
        expect(() => validateEnv(others)).toThrow(`${name} is required`);
      } else if (documentedDefault === 'unset') {
        expect(withDefaults[name]).toBeUndefined();
      } else {
        // Parsed by the schema as if set explicitly, it must give what leaving it unset gives
        // (this also covers transformed values: lists, booleans, numbers).
        const explicit = validateEnv({ ...REQUIRED, [name]: documentedDefault }) as Record<
          string,
          unknown
        >;
        expect(withDefaults[name]).not.toBeUndefined();
        expect(explicit[name]).toEqual(withDefaults[name]);
      }
    },
  );
});
