import { BadRequestException, ValidationError, ValidationPipe } from '@nestjs/common';
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

/**
 * The global pipe: unknown fields are refused (not silently stripped), payloads are transformed
 * into their DTO classes, and failures become a 400 problem with one entry per field.
 */
export function createValidationPipe(): ValidationPipe {
  return new ValidationPipe({
    whitelist: true,
    forbidNonWhitelisted: true,
    transform: true,
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
