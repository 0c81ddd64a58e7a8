import { FieldError } from '../common/problem';

/**
 * The metadata filter of a search: a small, validated subset of MongoDB's query language,
 * compiled to a SQL condition whose every field name and value is a bind parameter.
 *
 *   {"category": "books"}                          equality (also {"category": {"$eq": "books"}})
 *   {"category": {"$ne": "books"}}                 differs, or the field is absent
 *   {"price": {"$gte": 10, "$lt": 20}}             range; several operators on one field all hold
 *   {"category": {"$in": ["books", "music"]}}      one of up to 256 values
 *   {"tag": {"$exists": true}}                     present (a JSON null counts as present)
 *   {"$and": [ … ]}, {"$or": [ … ]}                 nested up to 4 levels
 *   {"a": 1, "b": 2}                               several keys: all hold
 *
 * Field names are paths of 1–4 dot-separated segments of `[A-Za-z_][A-Za-z0-9_]{0,63}`
 * (`author.name` reads `{"author": {"name": …}}`). Values are strings (up to 1024 characters),
 * finite numbers, booleans and null, compared as JSON: `"10"` does not equal `10`, and a field
 * holding an array or object is not equal to any of these values. Ranges compare numbers with
 * numbers and strings with strings (database collation); an item whose field has another type
 * does not match, it never fails the search. At most 64 conditions in all.
 */

export type FilterScalar = string | number | boolean | null;

export type FilterNode =
  | { kind: 'and' | 'or'; children: FilterNode[] }
  | { kind: 'eq' | 'ne'; path: string[]; value: FilterScalar }
  | { kind: 'range'; op: RangeOperator; path: string[]; value: number | string }
  | { kind: 'in'; path: string[]; values: FilterScalar[] }
  | { kind: 'exists'; path: string[]; exists: boolean };

type RangeOperator = '>' | '>=' | '<' | '<=';

export const FILTER_LIMITS = {
  /** Nesting of $and / $or. */
  depth: 4,
  conditions: 64,
  inValues: 256,
  pathSegments: 4,
  stringLength: 1024,
} as const;

const SEGMENT = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Keys the request pipeline strips as prototype-pollution guards: never matchable, refused. */
const RESERVED_SEGMENTS = new Set(['__proto__', 'constructor', 'prototype']);
const RANGE_OPERATORS: Record<string, RangeOperator> = {
  $gt: '>',
  $gte: '>=',
  $lt: '<',
  $lte: '<=',
};
const FIELD_OPERATORS = new Set(['$eq', '$ne', '$in', '$exists', ...Object.keys(RANGE_OPERATORS)]);
/** Enough to show what is wrong; a hostile filter should not make a huge error list. */
const MAX_ERRORS = 20;

export interface ParsedFilter {
  /** Null for an absent filter. */
  filter: FilterNode | null;
  errors: FieldError[];
}

/**
 * Validates `input` (the request's `filter`, already JSON) into a tree, or lists every problem
 * with its path (`filter.$and[1].price.$gt`). Pure: nothing is looked up anywhere.
 */
export function parseFilter(input: unknown, field = 'filter'): ParsedFilter {
  if (input === undefined || input === null) return { filter: null, errors: [] };
  const parser = new FilterParser();
  const filter = parser.object(input, field, 0);
  if (parser.conditions > FILTER_LIMITS.conditions) {
    parser.fail(field, `at most ${FILTER_LIMITS.conditions} conditions in all`);
  }
  return parser.errors.length > 0
    ? { filter: null, errors: parser.errors.slice(0, MAX_ERRORS) }
    : { filter, errors: [] };
}

class FilterParser {
  readonly errors: FieldError[] = [];
  conditions = 0;

  fail(field: string, message: string): void {
    this.errors.push({ field, message });
  }

  /** Stops the walk: too many errors to be useful, or more conditions than allowed. */
  private get done(): boolean {
    return this.errors.length >= MAX_ERRORS || this.conditions > FILTER_LIMITS.conditions;
  }

  /** A filter object: its keys are fields or $and / $or, all of which hold. */
  object(input: unknown, field: string, depth: number): FilterNode {
    const children: FilterNode[] = [];
    if (!isPlainObject(input)) {
      this.fail(field, 'must be an object of conditions');
      return { kind: 'and', children };
    }
    const keys = Object.keys(input);
    if (keys.length === 0) {
      this.fail(field, 'must hold at least one condition (omit the filter to search everything)');
    }
    for (const key of keys) {
      if (this.done) break;
      const at = childPath(field, key);
      const value = input[key];
      if (key === '$and' || key === '$or') {
        children.push(this.logical(key, value, at, depth + 1));
      } else if (key.startsWith('$')) {
        this.fail(at, 'unknown operator; at this level only $and and $or, or field names');
      } else {
        const path = this.path(key, at);
        if (path) children.push(...this.conditionsOn(path, value, at));
      }
    }
    return children.length === 1 ? children[0] : { kind: 'and', children };
  }

  private logical(key: '$and' | '$or', value: unknown, field: string, depth: number): FilterNode {
    const children: FilterNode[] = [];
    if (depth > FILTER_LIMITS.depth) {
      this.fail(field, `$and / $or may be nested at most ${FILTER_LIMITS.depth} levels deep`);
    } else if (!Array.isArray(value) || value.length === 0) {
      this.fail(field, 'must be a non-empty array of filter objects');
    } else if (value.length > FILTER_LIMITS.conditions) {
      this.fail(field, `at most ${FILTER_LIMITS.conditions} entries`);
    } else {
      for (let i = 0; i < value.length && !this.done; i++) {
        children.push(this.object(value[i], `${field}[${i}]`, depth));
      }
    }
    return { kind: key === '$and' ? 'and' : 'or', children };
  }

  private path(key: string, field: string): string[] | null {
    const segments = key.split('.');
    if (segments.length > FILTER_LIMITS.pathSegments) {
      this.fail(field, `field paths have at most ${FILTER_LIMITS.pathSegments} segments`);
      return null;
    }
    for (const segment of segments) {
      if (!SEGMENT.test(segment) || RESERVED_SEGMENTS.has(segment)) {
        this.fail(
          field,
          'field names are 1-4 dot-separated segments of a letter or _ then up to 63 letters, ' +
            'digits or _ (not __proto__, constructor or prototype)',
        );
        return null;
      }
    }
    return segments;
  }

  /** `value` is a scalar (equality) or an object of operators. */
  private conditionsOn(path: string[], value: unknown, field: string): FilterNode[] {
    if (!isPlainObject(value)) {
      const scalar = this.scalar(value, field);
      this.conditions++;
      return scalar === undefined ? [] : [{ kind: 'eq', path, value: scalar }];
    }
    const operators = Object.keys(value);
    if (operators.length === 0) {
      this.fail(field, 'must hold at least one operator');
      return [];
    }
    const nodes: FilterNode[] = [];
    for (const operator of operators) {
      if (this.done) break;
      const at = childPath(field, operator);
      const operand = value[operator];
      this.conditions++;
      if (!FIELD_OPERATORS.has(operator)) {
        this.fail(
          at,
          operator.startsWith('$')
            ? 'unknown operator; use $eq, $ne, $gt, $gte, $lt, $lte, $in or $exists'
            : 'values are strings, numbers, booleans or null; name nested fields with a dotted path',
        );
        continue;
      }
      if (operator === '$eq' || operator === '$ne') {
        const scalar = this.scalar(operand, at);
        if (scalar !== undefined) {
          nodes.push({ kind: operator === '$eq' ? 'eq' : 'ne', path, value: scalar });
        }
      } else if (operator === '$in') {
        const values = this.inValues(operand, at);
        if (values) nodes.push({ kind: 'in', path, values });
      } else if (operator === '$exists') {
        if (typeof operand === 'boolean') nodes.push({ kind: 'exists', path, exists: operand });
        else this.fail(at, 'must be true or false');
      } else {
        if (typeof operand === 'string' || typeof operand === 'number') {
          const scalar = this.scalar(operand, at);
          if (scalar !== undefined) {
            nodes.push({
              kind: 'range',
              op: RANGE_OPERATORS[operator],
              path,
              value: scalar as number | string,
            });
          }
        } else {
          this.fail(at, 'must be a number or a string');
        }
      }
    }
    return nodes;
  }

  private inValues(operand: unknown, field: string): FilterScalar[] | null {
    if (!Array.isArray(operand)) {
      this.fail(field, 'must be an array of values');
      return null;
    }
    if (operand.length > FILTER_LIMITS.inValues) {
      this.fail(field, `at most ${FILTER_LIMITS.inValues} values`);
      return null;
    }
    const values: FilterScalar[] = [];
    operand.forEach((element, i) => {
      const scalar = this.scalar(element, `${field}[${i}]`);
      if (scalar !== undefined) values.push(scalar);
    });
    return values.length === operand.length ? values : null;
  }

  /** A comparable value, or undefined after recording why not. */
  private scalar(value: unknown, field: string): FilterScalar | undefined {
    if (value === null || typeof value === 'boolean') return value;
    if (typeof value === 'number') {
      if (Number.isFinite(value)) return value;
      this.fail(field, 'must be a finite number');
      return undefined;
    }
    if (typeof value === 'string') {
      if (value.length <= FILTER_LIMITS.stringLength) return value;
      this.fail(field, `strings have at most ${FILTER_LIMITS.stringLength} characters`);
      return undefined;
    }
    this.fail(
      field,
      'values are strings, numbers, booleans or null; use an operator object such as {"$in": [...]}',
    );
    return undefined;
  }
}

export interface CompiledFilter {
  /** A boolean SQL condition referring to `$n` placeholders from `firstParameter` on. */
  sql: string;
  values: unknown[];
}

/**
 * The filter as a SQL condition on the jsonb column `column` (an identifier the caller owns,
 * never request data). Field paths and values are bind parameters: equality and $in as
 * containment (`metadata @> $n::jsonb`), which the slot's `jsonb_path_ops` GIN index serves;
 * ranges as jsonb comparisons behind a jsonb_typeof guard (no cast, so a value of another type
 * never raises an error); $exists as a path lookup.
 */
export function compileFilter(
  filter: FilterNode,
  column: string,
  firstParameter: number,
): CompiledFilter {
  const values: unknown[] = [];
  const parameter = (value: unknown) => {
    values.push(value);
    return `$${firstParameter + values.length - 1}`;
  };
  const compile = (node: FilterNode): string => {
    switch (node.kind) {
      case 'and':
      case 'or':
        return `(${node.children.map(compile).join(node.kind === 'and' ? ' AND ' : ' OR ')})`;
      case 'eq':
        return `${column} @> ${parameter(containment(node.path, node.value))}::jsonb`;
      case 'ne':
        // An item without the field (or without metadata) differs from any value.
        return `NOT COALESCE(${column} @> ${parameter(containment(node.path, node.value))}::jsonb, false)`;
      case 'in':
        return `${column} @> ANY(${parameter(node.values.map((value) => containment(node.path, value)))}::jsonb[])`;
      case 'range': {
        const path = parameter(node.path);
        const type = typeof node.value === 'number' ? 'number' : 'string';
        return (
          `(jsonb_typeof(${column} #> ${path}::text[]) = '${type}'` +
          ` AND ${column} #> ${path}::text[] ${node.op} ${parameter(JSON.stringify(node.value))}::jsonb)`
        );
      }
      case 'exists':
        return `${column} #> ${parameter(node.path)}::text[] IS ${node.exists ? 'NOT ' : ''}NULL`;
    }
  };
  return { sql: compile(filter), values };
}

/**
 * `{"a": {"b": value}}` for path a.b, as JSON text. Written out rather than built as an object:
 * assigning a key such as `__proto__` to an object literal would set its prototype instead.
 */
function containment(path: string[], value: FilterScalar): string {
  return path.reduceRight<string>(
    (inner, segment) => `{${JSON.stringify(segment)}:${inner}}`,
    JSON.stringify(value),
  );
}

function childPath(parent: string, key: string): string {
  return /^[$A-Za-z0-9_.]{1,70}$/.test(key)
    ? `${parent}.${key}`
    : `${parent}[${JSON.stringify(key.slice(0, 64))}]`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value) as unknown;
  return prototype === Object.prototype || prototype === null;
}
