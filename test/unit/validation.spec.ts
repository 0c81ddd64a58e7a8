import { ValidationError } from 'class-validator';
import { flattenValidationErrors } from '../../src/common/validation';

function node(
  property: string,
  constraints?: Record<string, string>,
  children: ValidationError[] = [],
): ValidationError {
  return Object.assign(new ValidationError(), { property, constraints, children });
}

describe('flattenValidationErrors', () => {
  it('gives nested and array fields dotted/bracketed paths, one entry per constraint', () => {
    const errors = [
      node('table_name', {
        isIn: 'table_name must be one of questions, patterns',
        isString: 'not a string',
      }),
      node('items', undefined, [node('3', undefined, [node('obj_ref', { length: 'too long' })])]),
    ];
    expect(flattenValidationErrors(errors)).toEqual([
      { field: 'table_name', message: 'table_name must be one of questions, patterns' },
      { field: 'table_name', message: 'not a string' },
      { field: 'items[3].obj_ref', message: 'too long' },
    ]);
  });
});
