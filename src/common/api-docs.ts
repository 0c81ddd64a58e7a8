import { applyDecorators } from '@nestjs/common';
import {
  ApiBearerAuth,
  ApiProperty,
  ApiPropertyOptional,
  ApiResponse,
  ApiSecurity,
} from '@nestjs/swagger';

/** The RFC 9457 body of every error response. */
export class ProblemDetailsDto {
  @ApiProperty({ example: 'about:blank' }) type!: string;
  @ApiProperty({ example: 'Bad Request' }) title!: string;
  @ApiProperty({ example: 400 }) status!: number;
  @ApiPropertyOptional() detail?: string;
  @ApiPropertyOptional() instance?: string;
  @ApiPropertyOptional({
    description: 'Field-level validation failures',
    example: [{ field: 'items[0].obj_ref', message: 'obj_ref must be a string' }],
  })
  errors?: { field: string; message: string }[];
}

const problem = (status: number, description: string) =>
  ApiResponse({
    status,
    description,
    type: ProblemDetailsDto,
    content: {
      'application/problem+json': { schema: { $ref: '#/components/schemas/ProblemDetailsDto' } },
    },
  });

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
export const ApiConflict = (what: string) => problem(409, what);
export const ApiIdempotencyErrors = () =>
  applyDecorators(
    problem(409, 'A request with this Idempotency-Key is still in flight (Retry-After)'),
    problem(422, 'Idempotency-Key reused with a different payload'),
  );
