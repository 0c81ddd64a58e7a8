import { createHash, randomBytes } from 'node:crypto';
import {
  BadRequestException,
  CallHandler,
  ConflictException,
  ExecutionContext,
  Inject,
  Injectable,
  Logger,
  NestInterceptor,
  SetMetadata,
  UnprocessableEntityException,
  UseInterceptors,
  applyDecorators,
} from '@nestjs/common';
import { HTTP_CODE_METADATA } from '@nestjs/common/constants';
import { Reflector } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import { Observable, catchError, from, mergeMap } from 'rxjs';
import { toProblem } from '../common/problem-details.filter';
import { PROBLEM_CONTENT_TYPE } from '../common/problem';
import { startHeartbeat } from './heartbeat';
import { IdempotencyStore } from './idempotency-store';
import {
  IDEMPOTENCY_MODULE_OPTIONS,
  IDEMPOTENCY_STORE,
  IdempotencyModuleOptions,
} from './idempotency.module-definition';
import { ReplayedResponse } from './replayed-response';

export const IDEMPOTENT_ROUTE_METADATA = 'idempotency:route';

export interface IdempotentRouteOptions {
  /** Reject requests without the header (default: the header is optional). */
  required?: boolean;
  /** How long responses are replayable (default: the module's ttl_seconds). */
  ttlSeconds?: number;
  /** Lease of an in-flight request's record, renewed while it runs (default: in_progress_ttl). */
  inProgressTtl?: number;
}

/** Stored per key: what is replayed. */
interface StoredResponse {
  status_code: number;
  body: unknown;
  content_type: string;
}

// An sf-string of visible ASCII (RFC 8941), as the IETF draft specifies, optionally quoted.
const KEY_PATTERN = /^[\x21\x23-\x5b\x5d-\x7e]{1,255}$/;

/**
 * HTTP `Idempotency-Key` for POST routes, after the IETF draft: the first request with a key runs
 * and its response (2xx-4xx) is stored; a repeat with the same payload gets that response again
 * with `Idempotent-Replayed: true`; a repeat with a different payload gets 422; one that arrives
 * while the first still runs gets 409 with Retry-After. 5xx responses are not stored. Keys are
 * scoped by the caller's credential and the route, so clients never see each other's responses.
 */
@Injectable()
export class IdempotencyKeyInterceptor implements NestInterceptor {
  private readonly logger = new Logger('IdempotencyKey');
  private readonly prefix: string;

  constructor(
    private readonly reflector: Reflector,
    @Inject(IDEMPOTENCY_STORE) private readonly store: IdempotencyStore,
    @Inject(IDEMPOTENCY_MODULE_OPTIONS) private readonly options: IdempotencyModuleOptions,
  ) {
    this.prefix = options.prefix ?? 'idem:';
  }

  async intercept(context: ExecutionContext, next: CallHandler): Promise<Observable<unknown>> {
    const routeOptions =
      this.reflector.get<IdempotentRouteOptions | undefined>(
        IDEMPOTENT_ROUTE_METADATA,
        context.getHandler(),
      ) ?? {};
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    const idempotencyKey = parseKeyHeader(request.headers['idempotency-key']);
    if (idempotencyKey === undefined) {
      if (routeOptions.required) {
        throw new BadRequestException('This endpoint requires an Idempotency-Key header.');
      }
      return next.handle();
    }

    const storeKey = `${this.prefix}http:${sha256(
      [
        credentialOf(request),
        request.method,
        request.routeOptions.url ?? request.url,
        idempotencyKey,
      ].join('\n'),
    )}`;
    const fingerprint = sha256(canonicalJson(request.body));
    const owner = randomBytes(12).toString('hex');
    const defaults = this.options.defaults ?? {};
    const leaseMs = (routeOptions.inProgressTtl ?? defaults.in_progress_ttl ?? 300) * 1000;
    const ttlMs = (routeOptions.ttlSeconds ?? defaults.ttl_seconds ?? 3_600) * 1000;

    const begun = await this.store.begin(
      storeKey,
      { status: 'in_progress', scope: 'http', owner, started_at: Date.now(), fingerprint },
      leaseMs,
      false,
    );
    if (!begun.leader) {
      const { record } = begun;
      if (record.fingerprint !== fingerprint) {
        throw new UnprocessableEntityException(
          'This Idempotency-Key was already used with a different request payload.',
        );
      }
      if (record.status === 'in_progress') {
        throw new ConflictException({
          message: 'A request with this Idempotency-Key is still being processed.',
          retry_after_seconds: 1,
        });
      }
      const stored = JSON.parse(record.result) as StoredResponse;
      throw new ReplayedResponse(stored.status_code, stored.body, stored.content_type);
    }

    const controller = new AbortController();
    const heartbeat = startHeartbeat(this.store, storeKey, owner, leaseMs, controller, this.logger);
    const finish = async (response: StoredResponse | undefined) => {
      heartbeat.stop();
      if (response === undefined) {
        await this.store.abandon(storeKey, owner);
        return;
      }
      await this.store.complete(
        storeKey,
        owner,
        {
          status: 'done',
          scope: 'http',
          owner,
          fingerprint,
          started_at: Date.now(),
          completed_at: Date.now(),
          result: JSON.stringify(response),
        },
        ttlMs,
      );
    };
    const successStatus =
      this.reflector.get<number | undefined>(HTTP_CODE_METADATA, context.getHandler()) ??
      (request.method === 'POST' ? 201 : 200);

    return next.handle().pipe(
      mergeMap((body: unknown) =>
        from(
          finish({ status_code: successStatus, body, content_type: 'application/json' }).then(
            () => body,
          ),
        ),
      ),
      catchError((error: unknown) =>
        from(
          (async () => {
            if (error instanceof ReplayedResponse) throw error;
            const { status, body } = toProblem(error, request.url);
            // A server error may be transient: the client may retry the same key and run again.
            await finish(
              status >= 500
                ? undefined
                : { status_code: status, body, content_type: PROBLEM_CONTENT_TYPE },
            ).catch((storeError: unknown) =>
              this.logger.warn(
                `could not store the response for ${storeKey}: ${String(storeError)}`,
              ),
            );
            throw error;
          })(),
        ),
      ),
    );
  }
}

/** Marks a POST route as accepting an `Idempotency-Key` header. */
export const IdempotentRoute = (options: IdempotentRouteOptions = {}) =>
  applyDecorators(
    SetMetadata(IDEMPOTENT_ROUTE_METADATA, options),
    UseInterceptors(IdempotencyKeyInterceptor),
  );

function parseKeyHeader(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  if (Array.isArray(header)) throw new BadRequestException('Send one Idempotency-Key header.');
  const value =
    header.length >= 2 && header.startsWith('"') && header.endsWith('"')
      ? header.slice(1, -1)
      : header;
  if (!KEY_PATTERN.test(value)) {
    throw new BadRequestException(
      'Idempotency-Key must be 1-255 visible ASCII characters (no spaces, quotes or backslashes).',
    );
  }
  return value;
}

/**
 * Whose keys these are: the authenticated API key's name, else the credential sent, hashed (the
 * same secret always maps to the same scope), else everyone anonymous together.
 */
function credentialOf(request: FastifyRequest): string {
  const caller = (request as FastifyRequest & { caller?: { keyName: string } }).caller;
  if (caller) return `key:${caller.keyName}`;
  const { authorization } = request.headers;
  const apiKey = request.headers['x-api-key'];
  const credential = authorization ?? (Array.isArray(apiKey) ? apiKey.join(',') : apiKey);
  return credential ? sha256(credential) : 'anonymous';
}

function sha256(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

/** JSON with object keys sorted, so the same payload always has the same fingerprint. */
export function canonicalJson(value: unknown): string {
  if (value === undefined) return '';
  return JSON.stringify(value, (_key, nested: unknown) =>
    nested && typeof nested === 'object' && !Array.isArray(nested)
      ? Object.fromEntries(
          Object.entries(nested as Record<string, unknown>).sort(([a], [b]) =>
            a < b ? -1 : a > b ? 1 : 0,
          ),
        )
      : nested,
  );
}
