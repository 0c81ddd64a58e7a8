import { applyDecorators } from '@nestjs/common';
import {
  ApiBearerAuth,
  ApiExtraModels,
  ApiHeader,
  ApiProperty,
  ApiPropertyOptional,
  ApiResponse,
  ApiSecurity,
  getSchemaPath,
} from '@nestjs/swagger';

/** One field-level problem: where (`items[0].obj_ref`) and what. */
export class FieldErrorDto {
  @ApiProperty({ example: 'items[0].obj_ref' }) field!: string;
  @ApiProperty({ example: 'obj_ref must be a string' }) message!: string;
}

/** The RFC 9457 body of every error response. */
export class ProblemDetailsDto {
  @ApiProperty({ example: 'about:blank' }) type!: string;
  @ApiProperty({ example: 'Bad Request' }) title!: string;
  @ApiProperty({ example: 400 }) status!: number;
  @ApiPropertyOptional() detail?: string;
  @ApiPropertyOptional() instance?: string;
  @ApiPropertyOptional({ description: 'Field-level validation failures', type: [FieldErrorDto] })
  errors?: FieldErrorDto[];
}

const RETRY_AFTER = {
  'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer' } },
};

/** Error answers are problem+json only (the filter never answers them as application/json). */
const problem = (status: number, description: string, retryAfter = false) =>
  applyDecorators(
    ApiExtraModels(ProblemDetailsDto, FieldErrorDto),
    ApiResponse({
      status,
      description,
      headers: retryAfter ? RETRY_AFTER : undefined,
      content: {
        'application/problem+json': { schema: { $ref: getSchemaPath(ProblemDetailsDto) } },
      },
    }),
  );

/** Auth schemes and the error answers every authenticated route may give. */
export const ApiAuthenticated = () =>
  applyDecorators(
    ApiBearerAuth('bearer'),
    ApiSecurity('api-key'),
    problem(401, 'No valid API key'),
    problem(403, 'The API key lacks the scope this route needs'),
    problem(503, 'Redis, Postgres or the embedding provider is unavailable'),
  );

export const ApiBadRequest = () => problem(400, 'Invalid input (see errors[])');
export const ApiNotFound = (what = 'Unknown namespace') => problem(404, what);
/** 409s may carry Retry-After (a lock not acquired in time, an operation still running). */
export const ApiConflict = (what: string) => problem(409, what, true);
export const ApiIdempotencyErrors = () =>
  applyDecorators(
    ApiHeader({
      name: 'Idempotency-Key',
      required: false,
      description:
        'Repeat-safe retries (IETF draft): a repeat with the same payload replays the stored answer with Idempotent-Replayed: true',
      schema: { type: 'string' },
    }),
    problem(409, 'A request with this Idempotency-Key is still in flight (Retry-After)', true),
    problem(422, 'Idempotency-Key reused with a different payload'),
  );
