import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ReplayedResponse } from '../idempotency/replayed-response';
import { knownError } from './known-errors';
import { PROBLEM_CONTENT_TYPE, ProblemDetails, problem } from './problem';

/** Terminus' health report body, which probes and dashboards expect unchanged on a 503. */
interface HealthReport {
  status: 'error' | 'ok' | 'shutting_down';
  details: Record<string, unknown>;
}

function isHealthReport(body: unknown): body is HealthReport {
  return typeof body === 'object' && body !== null && 'details' in body && 'status' in body;
}

function isProblem(body: unknown): body is ProblemDetails {
  return typeof body === 'object' && body !== null && 'type' in body && 'title' in body;
}

/** Nest's built-in exceptions carry `{ message: string | string[] }`; use it as the detail. */
function detailOf(response: string | object, fallback: string): string {
  if (typeof response === 'string') return response;
  const { message } = response as { message?: unknown };
  if (Array.isArray(message)) return message.map(String).join('; ');
  return typeof message === 'string' ? message : fallback;
}

/**
 * Turns any error into an RFC 9457 problem. Errors that carry an HTTP status — Nest's
 * HttpExceptions and Fastify's own (body too large, malformed JSON) — keep it; anything else is
 * an unexpected 500 whose details are logged, never sent.
 */
export function toProblem(
  error: unknown,
  instance?: string,
): { status: number; body: unknown; retryAfter?: string } {
  const known = knownError(error);
  if (known) {
    return {
      status: known.status,
      body: problem(known.status, known.detail, { instance }),
      retryAfter: known.retryAfterSeconds?.toString(),
    };
  }
  if (error instanceof HttpException) {
    const status = error.getStatus();
    const response = error.getResponse();
    if (isHealthReport(response)) return { status, body: response };
    if (isProblem(response)) return { status, body: { ...response, instance } };
    return { status, body: problem(status, detailOf(response, error.message), { instance }) };
  }
  const statusCode = (error as { statusCode?: unknown } | null)?.statusCode;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return {
      status: statusCode,
      body: problem(statusCode, (error as Error).message, { instance }),
    };
  }
  return {
    status: 500,
    body: problem(500, 'An unexpected error occurred.', { instance }),
  };
}

export function sendProblem(
  reply: FastifyReply,
  error: unknown,
  request: FastifyRequest,
  logger: Logger,
): void {
  if (error instanceof ReplayedResponse) {
    void reply
      .status(error.statusCode)
      .headers(error.headers)
      .header('Idempotent-Replayed', 'true')
      .send(error.body);
    return;
  }
  const { status, body, retryAfter } = toProblem(error, request.url);
  if (status === 500) {
    logger.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  } else if (status >= 500 && !(error instanceof HttpException)) {
    logger.warn(error instanceof Error ? error.message : String(error));
  }
  const retryAfterHeader =
    retryAfter ?? (error instanceof HttpException ? retryAfterOf(error) : undefined);
  if (retryAfterHeader) void reply.header('Retry-After', retryAfterHeader);
  if (status === 401) void reply.header('WWW-Authenticate', 'Bearer');
  const contentType = isHealthReport(body) ? 'application/json' : PROBLEM_CONTENT_TYPE;
  void reply.status(status).header('Content-Type', contentType).send(body);
}

/** Exceptions may carry a `retryAfterSeconds` (lock contention, rate limits) for the header. */
function retryAfterOf(error: HttpException): string | undefined {
  const response = error.getResponse() as { retry_after_seconds?: unknown };
  return typeof response.retry_after_seconds === 'number'
    ? String(Math.ceil(response.retry_after_seconds))
    : undefined;
}

@Catch()
export class ProblemDetailsFilter implements ExceptionFilter {
  private readonly logger = new Logger('ProblemDetails');

  catch(error: unknown, host: ArgumentsHost): void {
    const http = host.switchToHttp();
    sendProblem(
      http.getResponse<FastifyReply>(),
      error,
      http.getRequest<FastifyRequest>(),
      this.logger,
    );
  }
}
