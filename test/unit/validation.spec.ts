import 'reflect-metadata';
import { BadRequestException } from '@nestjs/common';
import { ValidationError } from 'class-validator';
import { createValidationPipe, flattenValidationErrors } from '../../src/common/validation';
import { BatchUpsertDto, UpsertItemDto } from '../../src/vector/dto/vector.dto';

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

describe('the global validation pipe', () => {
  const pipe = createValidationPipe();
  const embedding = (seed: number) => Array.from({ length: 32 }, (_, i) => (i * seed) % 7);
  const body = () => ({
    table_name: 'questions',
    namespace: 'ns',
    items: [
      { obj_ref: 'a', content: 'A', embedding: embedding(3), metadata: { tags: [1, 2] } },
      { obj_ref: 'b', content: 'B', embedding: embedding(5) },
    ],
  });

  it('builds the DTO classes with number arrays intact, and leaves the request body as it came', async () => {
    const input = body();
    const dto = (await pipe.transform(input, {
      type: 'body',
      metatype: BatchUpsertDto,
    })) as BatchUpsertDto;
    expect(dto).toBeInstanceOf(BatchUpsertDto);
    expect(dto.items[0]).toBeInstanceOf(UpsertItemDto);
    expect(dto.items.map((item) => item.embedding)).toEqual([embedding(3), embedding(5)]);
    expect(dto.items[0].metadata).toEqual({ tags: [1, 2] });
    expect(input).toEqual(body());
  });

  it('still rejects arrays that are not all numbers, and puts the body back', async () => {
    const input = body();
    (input.items[1].embedding as unknown[])[4] = 'x';
    await expect(
      pipe.transform(input, { type: 'body', metatype: BatchUpsertDto }),
    ).rejects.toBeInstanceOf(BadRequestException);
    expect(input.items[0].embedding).toEqual(embedding(3));
  });

  it('still strips prototype keys and closes array gaps beside number arrays', async () => {
    const input = JSON.parse(
      '{"table_name":"questions","namespace":"ns","items":[{"obj_ref":"a","content":"A",' +
        `"embedding":${JSON.stringify(embedding(3))},` +
        '"metadata":{"__proto__":{"polluted":true},"constructor":{"prototype":{"x":1}},"ok":1}}]}',
    ) as ReturnType<typeof body>;
    const sparse: unknown[] = [];
    sparse[2] = 'kept';
    (input.items[0].metadata as Record<string, unknown>).list = sparse;
    const dto = (await pipe.transform(input, {
      type: 'body',
      metatype: BatchUpsertDto,
    })) as BatchUpsertDto;
    expect(dto.items[0].embedding).toEqual(embedding(3));
    const metadata = dto.items[0].metadata!;
    expect(Object.keys(metadata).sort()).toEqual(['list', 'ok']);
    expect(metadata.list).toEqual(['kept']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});
