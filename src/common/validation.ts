import { BadRequestException, Type, ValidationError, ValidationPipe } from '@nestjs/common';
import type { TransformerPackage } from '@nestjs/common/interfaces/external/transformer-package.interface';
import { ClassTransformOptions, instanceToPlain, plainToInstance } from 'class-transformer';
import { FieldError, problem } from './problem';

/** Flattens class-validator's nested errors into `items[0].obj_ref`-style paths. */
export function flattenValidationErrors(errors: ValidationError[], parent = ''): FieldError[] {
  return errors.flatMap((error) => {
    const field = /^\d+$/.test(error.property)
      ? `${parent}[${error.property}]`
      : parent
        ? `${parent}.${error.property}`
        : error.property;
    const own = Object.values(error.constraints ?? {}).map((message) => ({ field, message }));
    return [...own, ...flattenValidationErrors(error.children ?? [], field)];
  });
}

/** Shorter arrays are not worth the swap. */
const SWAP_MIN_LENGTH = 16;

/**
 * class-transformer copies arrays element by element, asking of each number what class to build;
 * for embeddings (hundreds of numbers per item, thousands of items per batch) that was most of
 * the pipe's time. Arrays holding only numbers transform to equal copies of themselves, so they
 * are swapped for opaque stand-ins while the rest is transformed, then put back as they came.
 */
const numberArraysAsIs: TransformerPackage = {
  plainToInstance<T>(cls: Type<T>, plain: unknown, options?: ClassTransformOptions): T | T[] {
    return withNumberArraysHidden(plain, (hidden, swapped) =>
      restoreNumberArrays(plainToInstance(cls, hidden, options), swapped),
    ) as T | T[];
  },
  classToPlain: instanceToPlain,
};

/**
 * Runs `run` on `value` with its number arrays swapped out (in place), then puts them back in
 * `value`. `run` also gets the swapped arrays, to put them back into what it built.
 */
function withNumberArraysHidden<R>(
  value: unknown,
  run: (hidden: unknown, swapped: Map<symbol, number[]>) => R,
): R {
  const swapped = new Map<symbol, number[]>();
  const hidden = swapNumberArrays(value, swapped);
  try {
    return run(hidden, swapped);
  } finally {
    restoreNumberArrays(value, swapped);
  }
}

function isNumberArray(value: unknown[]): value is number[] {
  if (value.length < SWAP_MIN_LENGTH) return false;
  for (const element of value) if (typeof element !== 'number') return false;
  return true;
}

/** Replaces, in place, each array of numbers found in `value` by a symbol kept in `swapped`. */
function swapNumberArrays(value: unknown, swapped: Map<symbol, number[]>): unknown {
  if (Array.isArray(value)) {
    if (isNumberArray(value)) {
      const standIn = Symbol('numbers');
      swapped.set(standIn, value);
      return standIn;
    }
    // Only changed slots are written: writing the others would fill a sparse array's gaps.
    for (let i = 0; i < value.length; i++) {
      const swappedItem = swapNumberArrays(value[i], swapped);
      if (swappedItem !== value[i]) value[i] = swappedItem;
    }
  } else if (isPlainObject(value)) {
    for (const key of Object.keys(value)) {
      const swappedItem = swapNumberArrays(value[key], swapped);
      if (swappedItem !== value[key]) value[key] = swappedItem;
    }
  }
  return value;
}

/** Puts back, in place, the arrays swapped out by swapNumberArrays. */
function restoreNumberArrays(value: unknown, swapped: Map<symbol, number[]>): unknown {
  if (swapped.size === 0) return value;
  if (typeof value === 'symbol') return swapped.get(value) ?? value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (typeof value[i] === 'object' || typeof value[i] === 'symbol') {
        value[i] = restoreNumberArrays(value[i], swapped);
      }
    }
  } else if (value !== null && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (typeof record[key] === 'object' || typeof record[key] === 'symbol') {
        record[key] = restoreNumberArrays(record[key], swapped);
      }
    }
  }
  return value;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const prototype = Object.getPrototypeOf(value) as unknown;
  return prototype === Object.prototype || prototype === null;
}

/**
 * Before transforming, ValidationPipe walks the payload twice, closing gaps in arrays and deleting
 * prototype keys, which lists the keys (or values) of every array: for a search's 384-number
 * vector that was a tenth of the request's CPU. Arrays holding only numbers have neither gaps (a
 * gap reads as undefined) nor keys to delete, so they are hidden from both walks.
 */
class NumberArrayAwareValidationPipe extends ValidationPipe {
  protected override closeArrayGaps(value: unknown): void {
    withNumberArraysHidden(value, () => super.closeArrayGaps(value));
  }

  protected override stripProtoKeys(value: unknown): void {
    withNumberArraysHidden(value, () => super.stripProtoKeys(value));
  }
}

/**
 * The global pipe: unknown fields are refused (not silently stripped), payloads are transformed
 * into their DTO classes, and failures become a 400 problem with one entry per field.
 */
export function createValidationPipe(): ValidationPipe {
  return new NumberArrayAwareValidationPipe({
    whitelist: true,
    forbidNonWhitelisted: true,
    transform: true,
    transformerPackage: numberArraysAsIs,
    stopAtFirstError: false,
    exceptionFactory: (errors) => {
      const fieldErrors = flattenValidationErrors(errors);
      return new BadRequestException(
        problem(400, 'The request is invalid; see errors for each field.', {
          title: 'Validation failed',
          errors: fieldErrors,
        }),
      );
    },
  });
}

/** A 400 problem for checks that need more than a DTO (configuration, other fields, the slot). */
export function invalidRequest(errors: FieldError[]): BadRequestException {
  return new BadRequestException(
    problem(400, 'The request is invalid; see errors for each field.', {
      title: 'Validation failed',
      errors,
    }),
  );
}
