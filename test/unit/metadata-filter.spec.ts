import { compileFilter, FILTER_LIMITS, parseFilter } from '../../src/vector/metadata-filter';

/** Parses and compiles from $4 on, failing the test on validation errors. */
function compiled(input: unknown) {
  const { filter, errors } = parseFilter(input);
  expect(errors).toEqual([]);
  return compileFilter(filter!, 'metadata', 4);
}

function fields(input: unknown): string[] {
  return parseFilter(input).errors.map((error) => error.field);
}

describe('metadata filter: compiling', () => {
  it('is absent for undefined and null', () => {
    expect(parseFilter(undefined)).toEqual({ filter: null, errors: [] });
    expect(parseFilter(null)).toEqual({ filter: null, errors: [] });
  });

  it('compiles equality to containment, with the document as a parameter', () => {
    expect(compiled({ category: 'books' })).toEqual({
      sql: 'metadata @> $4::jsonb',
      values: ['{"category":"books"}'],
    });
    expect(compiled({ 'author.name': { $eq: 7 } })).toEqual({
      sql: 'metadata @> $4::jsonb',
      values: ['{"author":{"name":7}}'],
    });
    expect(compiled({ flag: null }).values).toEqual(['{"flag":null}']);
    expect(compiled({ flag: false }).values).toEqual(['{"flag":false}']);
  });

  it('compiles several keys and $and to AND, $or to OR, numbering parameters in order', () => {
    expect(compiled({ a: 1, $or: [{ b: 'x' }, { c: { $exists: false } }] })).toEqual({
      sql: '(metadata @> $4::jsonb AND (metadata @> $5::jsonb OR metadata #> $6::text[] IS NULL))',
      values: ['{"a":1}', '{"b":"x"}', ['c']],
    });
    expect(compiled({ $and: [{ a: 1 }, { b: 2 }] }).sql).toBe(
      '(metadata @> $4::jsonb AND metadata @> $5::jsonb)',
    );
  });

  it('compiles ranges to type-guarded jsonb comparisons (no cast that could fail)', () => {
    expect(compiled({ price: { $gte: 10, $lt: 20.5 } })).toEqual({
      sql:
        "((jsonb_typeof(metadata #> $4::text[]) = 'number' AND metadata #> $4::text[] >= $5::jsonb)" +
        " AND (jsonb_typeof(metadata #> $6::text[]) = 'number' AND metadata #> $6::text[] < $7::jsonb))",
      values: [['price'], '10', ['price'], '20.5'],
    });
    expect(compiled({ name: { $gt: 'm' } })).toEqual({
      sql: "(jsonb_typeof(metadata #> $4::text[]) = 'string' AND metadata #> $4::text[] > $5::jsonb)",
      values: [['name'], '"m"'],
    });
  });

  it('compiles $in to containment of any of the documents, $ne to its negation', () => {
    expect(compiled({ c: { $in: ['a', 2, null] } })).toEqual({
      sql: 'metadata @> ANY($4::jsonb[])',
      values: [['{"c":"a"}', '{"c":2}', '{"c":null}']],
    });
    expect(compiled({ c: { $ne: 'a' } }).sql).toBe('NOT COALESCE(metadata @> $4::jsonb, false)');
    expect(compiled({ 'c.d': { $exists: true } })).toEqual({
      sql: 'metadata #> $4::text[] IS NOT NULL',
      values: [['c', 'd']],
    });
  });

  it('keeps hostile values in parameters: the SQL text depends only on the filter shape', () => {
    const hostile = `x'); DROP TABLE vector_namespaces; --`;
    const { sql, values } = compiled({
      a: hostile,
      b: { $in: [hostile, '"}', '\\'] },
      c: { $gt: hostile },
    });
    expect(sql).not.toContain('DROP');
    expect(sql).toMatch(/^[\w\s$@>#:=()[\]'<,]+$/);
    expect(JSON.parse(values[0] as string)).toEqual({ a: hostile });
    expect((values[1] as string[]).map((value) => JSON.parse(value) as unknown)).toEqual([
      { b: hostile },
      { b: '"}' },
      { b: '\\' },
    ]);
    expect(JSON.parse(values[3] as string)).toBe(hostile);
  });
});

describe('metadata filter: validation', () => {
  it.each([
    ['a non-object', 'books', ['filter']],
    ['an array', [{ a: 1 }], ['filter']],
    ['an empty object', {}, ['filter']],
    ['an unknown top-level operator', { $where: 'sleep(1)' }, ['filter.$where']],
    ['an unknown field operator', { price: { $regex: '.*' } }, ['filter.price.$regex']],
    ['an object value', { price: { amount: 1 } }, ['filter.price.amount']],
    ['an array value', { tags: ['a'] }, ['filter.tags']],
    ['an empty operator object', { price: {} }, ['filter.price']],
    ['a range on a boolean', { price: { $gt: true } }, ['filter.price.$gt']],
    ['a range on null', { price: { $lte: null } }, ['filter.price.$lte']],
    ['$in not an array', { c: { $in: 'a' } }, ['filter.c.$in']],
    ['$in with an object', { c: { $in: ['a', { b: 1 }] } }, ['filter.c.$in[1]']],
    ['$exists not a boolean', { c: { $exists: 1 } }, ['filter.c.$exists']],
    ['$and not an array', { $and: { a: 1 } }, ['filter.$and']],
    ['an empty $or', { $or: [] }, ['filter.$or']],
    ['an empty object in $and', { $and: [{ a: 1 }, {}] }, ['filter.$and[1]']],
    [
      'a nested error',
      { $and: [{ a: 1 }, { price: { $gt: 'x', $foo: 1 } }] },
      ['filter.$and[1].price.$foo'],
    ],
    ['an infinite number (1e999 in JSON)', { a: Infinity }, ['filter.a']],
    ['a too long string', { a: 'x'.repeat(FILTER_LIMITS.stringLength + 1) }, ['filter.a']],
    ['a field starting with a digit', { '1a': 1 }, ['filter.1a']],
    ['an empty path segment', { 'a..b': 1 }, ['filter.a..b']],
    ['a too deep path', { 'a.b.c.d.e': 1 }, ['filter.a.b.c.d.e']],
    ['a reserved name', { 'a.constructor': 1 }, ['filter.a.constructor']],
  ])('refuses %s, naming the path', (_, input, expected) => {
    expect(fields(input)).toEqual(expected);
  });

  it('refuses field names carrying SQL or JSON, quoting them in the path', () => {
    for (const name of [
      `a'; DROP TABLE vector_namespaces; --`,
      'a") OR true --',
      'a b',
      'a-b',
      '{a}',
      'a,b',
      'é',
      '',
    ]) {
      const { errors } = parseFilter({ [name]: 1 });
      expect(errors).toHaveLength(1);
      expect(errors[0].message).toMatch(/field names are/);
    }
    expect(fields({ [`x'--`]: 1 })).toEqual([`filter["x'--"]`]);
    expect(fields({ $or: [{ 'a b': { $gt: 1 } }] })).toEqual(['filter.$or[0]["a b"]']);
  });

  it('lists every problem, at most 20', () => {
    expect(fields({ a: [], b: {}, $c: 1 })).toEqual(['filter.a', 'filter.b', 'filter.$c']);
    const many = Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`f${i}`, []]));
    expect(fields(many)).toHaveLength(20);
  });

  it(`nests $and / $or at most ${FILTER_LIMITS.depth} levels`, () => {
    const nest = (levels: number): unknown =>
      levels === 0 ? { a: 1 } : { $and: [nest(levels - 1)] };
    expect(parseFilter(nest(4)).errors).toEqual([]);
    expect(fields(nest(5))).toEqual(['filter.$and[0].$and[0].$and[0].$and[0].$and']);
  });

  it(`allows ${FILTER_LIMITS.conditions} conditions and ${FILTER_LIMITS.inValues} $in values, no more`, () => {
    const conditions = (count: number) =>
      Object.fromEntries(Array.from({ length: count }, (_, i) => [`f${i}`, i]));
    expect(parseFilter(conditions(64)).errors).toEqual([]);
    expect(parseFilter(conditions(65)).errors).toEqual([
      { field: 'filter', message: 'at most 64 conditions in all' },
    ]);
    // Counted across nesting and operators alike.
    const spread = { $or: Array.from({ length: 33 }, (_, i) => ({ p: { $gt: i, $lt: i + 1 } })) };
    expect(fields(spread)).toEqual(['filter']);
    const values = (count: number) => ({ c: { $in: Array.from({ length: count }, (_, i) => i) } });
    expect(parseFilter(values(256)).errors).toEqual([]);
    expect(fields(values(257))).toEqual(['filter.c.$in']);
  });

  it('accepts an empty $in (it matches nothing)', () => {
    expect(compiled({ c: { $in: [] } })).toEqual({
      sql: 'metadata @> ANY($4::jsonb[])',
      values: [[]],
    });
  });
});
