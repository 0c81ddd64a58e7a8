import { validateSync } from 'class-validator';
import { IsVector } from '../../src/common/vector-validation';

class Holder {
  @IsVector(4)
  vector!: unknown;
}

const valid = (vector: unknown) => {
  const holder = new Holder();
  holder.vector = vector;
  return validateSync(holder).length === 0;
};

describe('@IsVector', () => {
  it('accepts 1..max finite numbers', () => {
    expect(valid([0.5])).toBe(true);
    expect(valid([1, -2, 3e-8, 4])).toBe(true);
  });

  it('refuses empty, too long, non-finite and non-number contents', () => {
    for (const bad of [
      [],
      [1, 2, 3, 4, 5],
      [1, Number.NaN],
      [Infinity],
      ['1'],
      [null],
      [[1]],
      'x',
      { 0: 1 },
      null,
    ]) {
      expect(valid(bad)).toBe(false);
    }
  });
});
