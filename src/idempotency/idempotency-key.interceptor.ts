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
import { Reflector } from '@nestjs/core';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Observable } from 'rxjs';
import { PROBLEM_CONTENT_TYPE, problem } from '../common/problem';
import { runAsLeader } from './idempotency-context';
import { responsesAreHooked, settleBeforeSend } from './idempotency-http.hooks';
import { IdempotencyLease } from './idempotency-lease';
import { IdempotencyStore, beginOrClear } from './idempotency-store';
import { IdempotencyUsageError } from './idempotency.errors';
import { IdempotencyMetrics } from './idempotency.metrics';
import {
  IDEMPOTENCY_MODULE_OPTIONS,
  IDEMPOTENCY_STORE,
  IdempotencyModuleOptions,
  maxResultBytesOf,
} from './idempotency.module-definition';
import { IdempotencyRecord } from './idempotency.types';
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

/** Stored per key: the response as it was sent. */
interface StoredResponse {
  v: 2;
  status_code: number;
  headers: Record<string, string>;
  /** The body as sent; base64 when it was binary. */
  body: string;
  encoding?: 'base64';
}

/** What earlier versions stored (still replayed while such records live). */
interface LegacyStoredResponse {
  status_code: number;
  body: unknown;
  content_type: string;
}

/** A request this instance leads: what settling its key needs. */
interface LeadingRequest {
  storeKey: string;
  owner: string;
  fingerprint: string;
  ttlMs: number;
  lease: IdempotencyLease;
  instance: string;
}

// An sf-string of visible ASCII (RFC 8941), as the IETF draft specifies, optionally quoted.
const KEY_PATTERN = /^[\x21\x23-\x5b\x5d-\x7e]{1,255}$/;

/** Response headers that are part of the outcome, stored and replayed with the body. */
const OUTCOME_HEADERS = ['content-type', 'location', 'content-location', 'retry-after'] as const;

/**
 * Client errors that the same request gets again however often it is retried. Others (408, 409,
 * 423, 425, 429, 401/403 …) can change on a retry, so they are never stored.
 */
const DETERMINISTIC_CLIENT_ERRORS = new Set([400, 404, 405, 406, 410, 411, 413, 414, 415, 422]);

/** Only outcomes that a retry cannot change are stored: 2xx and deterministic 4xx. */
export function isStorableStatus(status: number): boolean {
  return (status >= 200 && status < 300) || DETERMINISTIC_CLIENT_ERRORS.has(status);
}

/**
 * HTTP `Idempotency-Key` for POST routes, after the IETF draft. The first request with a key runs;
 * its response is stored as sent (status, body, Content-Type, Location, Content-Location,
 * Retry-After) if a retry could not change it — 2xx and deterministic 4xx, never 408/409/425/429
 * or 5xx, whose key is released instead — and if it is no larger than maxResultBytes. A repeat
 * with the same payload gets the stored response with `Idempotent-Replayed: true`; with a
 * different payload 422; while the first still runs 409 with Retry-After. Keys are scoped by the
 * caller's credential and the route, so clients never see each other's responses.
 *
 * One key, one answer: a request whose record was taken over while it ran (its lease ran out) does
 * not send its own response: it sends the stored response of the request that took over, or a
 * 409 saying it was taken over. The handler can watch `IdempotencyService.currentSignal()`.
 * Responses are captured in Fastify's onSend hook (IdempotencyHttpHooks), so what is stored is
 * exactly what was sent, error responses from the exception filter included.
 */
@Injectable()
export class IdempotencyKeyInterceptor implements NestInterceptor {
  private readonly logger = new Logger('IdempotencyKey');
  private readonly prefix: string;
  private readonly maxResultBytes: number;

  constructor(
    private readonly reflector: Reflector,
    @Inject(IDEMPOTENCY_STORE) private readonly store: IdempotencyStore,
    @Inject(IDEMPOTENCY_MODULE_OPTIONS) private readonly options: IdempotencyModuleOptions,
    private readonly metrics: IdempotencyMetrics,
  ) {
    this.prefix = options.prefix ?? 'idem:';
    this.maxResultBytes = maxResultBytesOf(options);
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
    if (!responsesAreHooked(request)) {
      throw new IdempotencyUsageError(
        '@IdempotentRoute needs the Fastify adapter and IdempotencyModule in the application',
      );
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

    const sentAt = performance.now();
    const begun = await beginOrClear(
      this.store,
      storeKey,
      { status: 'in_progress', scope: 'http', owner, started_at: Date.now(), fingerprint },
      leaseMs,
      false,
    );
    if (!begun.leader) this.refuseOrReplay(begun.record, fingerprint);

    const lease = new IdempotencyLease(this.store, storeKey, owner, leaseMs, sentAt, this.logger);
    const leading: LeadingRequest = {
      storeKey,
      owner,
      fingerprint,
      ttlMs,
      lease,
      instance: request.url,
    };
    settleBeforeSend(request, (reply, payload) => this.settle(leading, reply, payload));
    // The handler, and everything it awaits, sees the lease's signal (currentSignal()).
    return runAsLeader(storeKey, lease.signal, () => next.handle());
  }

  /** A request that found the key taken: 422, 409, or the stored response (thrown). */
  private refuseOrReplay(record: IdempotencyRecord, fingerprint: string | undefined): never {
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
    this.metrics.countHttp('replayed');
    const stored = readStored(record.result);
    throw new ReplayedResponse(stored.statusCode, stored.body, stored.headers);
  }

  /**
   * Stores the response of a request this instance led, just before it is sent (the lease is
   * renewed until the record is written); returns the payload to send — another one if the key
   * was taken over meanwhile.
   */
  private async settle(
    leading: LeadingRequest,
    reply: FastifyReply,
    payload: unknown,
  ): Promise<unknown> {
    const { storeKey, owner, lease } = leading;
    lease.writing();
    try {
      const status = reply.statusCode;
      if (!isStorableStatus(status)) {
        this.metrics.countHttp('released');
        // A retry may get another answer: release the key, unless it is no longer ours.
        if (await this.release(leading)) return payload;
        return this.answerOfLostRequest(leading, reply, { unclaimed: payload });
      }
      const body = bodyOf(payload);
      let record: string | undefined;
      if (body && body.bytes <= this.maxResultBytes) {
        const response: StoredResponse = {
          v: 2,
          status_code: status,
          headers: outcomeHeaders(reply),
          body: body.text,
          ...(body.encoding ? { encoding: body.encoding } : {}),
        };
        record = JSON.stringify(response);
        if (Buffer.byteLength(record) > this.maxResultBytes) record = undefined;
      }
      if (record === undefined) {
        this.metrics.countHttp('not_stored');
        const size = body ? `${body.bytes} bytes` : 'a stream';
        if (!(await this.release(leading))) {
          return this.answerOfLostRequest(leading, reply, { unclaimed: payload });
        }
        this.logger.warn(
          `${storeKey}: response not stored: ${size}, over maxResultBytes (${this.maxResultBytes} bytes); ` +
            'the key is released, so a retry runs again',
        );
        return payload;
      }
      let stored: boolean;
      try {
        stored = await this.store.complete(
          storeKey,
          owner,
          {
            status: 'done',
            scope: 'http',
            owner,
            fingerprint: leading.fingerprint,
            started_at: Date.now(),
            completed_at: Date.now(),
            result: record,
          },
          leading.ttlMs,
        );
      } catch (error) {
        // The caller still gets its answer; the record expires with the lease, and a retry runs.
        this.logger.warn(`could not store the response for ${storeKey}: ${String(error)}`);
        return payload;
      }
      if (stored) {
        this.metrics.countHttp('stored');
        return payload;
      }
      this.metrics.countHttp('stale_completion');
      return await this.answerOfLostRequest(leading, reply);
    } finally {
      lease.end();
    }
  }

  /** Deletes the request's in-progress record; false if it was not its own any more. */
  private async release({ storeKey, owner }: LeadingRequest): Promise<boolean> {
    try {
      return await this.store.abandon(storeKey, owner);
    } catch (error) {
      // Its record expires with the lease.
      this.logger.warn(`could not release ${storeKey}: ${String(error)}`);
      return true;
    }
  }

  /**
   * The response for a request that lost its record while it ran: the key's stored response if
   * a request that took over has finished, else a 409 saying so — its own response is not the
   * key's answer. Only a response that would not have been stored anyway (`unclaimed`) is still
   * sent when nobody took the key over (its record merely expired).
   */
  private async answerOfLostRequest(
    leading: LeadingRequest,
    reply: FastifyReply,
    fallback: { unclaimed?: unknown } = {},
  ): Promise<unknown> {
    const { storeKey } = leading;
    const current = await this.store.get(storeKey).catch((error: unknown) => {
      this.logger.warn(`could not read ${storeKey}: ${String(error)}`);
      return null;
    });
    if (current?.status === 'done' && current.fingerprint === leading.fingerprint) {
      this.logger.warn(
        `${storeKey}: this request lost its record while it ran; its response was not stored ` +
          'and the stored response of the request that took over is sent instead',
      );
      this.metrics.countHttp('replayed');
      const stored = readStored(current.result);
      replaceResponse(reply, stored.statusCode, {
        ...stored.headers,
        'idempotent-replayed': 'true',
      });
      return stored.body;
    }
    if (current === null && 'unclaimed' in fallback) return fallback.unclaimed;
    const state =
      current === null
        ? 'nothing is stored for it, so a retry runs again'
        : current.status === 'in_progress'
          ? 'another request with this Idempotency-Key took it over and is still running'
          : 'another request with this Idempotency-Key and a different payload took it over';
    this.logger.warn(
      `${storeKey}: this request lost its record while it ran: ${state}; not stored`,
    );
    const status = current?.status === 'done' ? 422 : 409;
    replaceResponse(reply, status, {
      'content-type': PROBLEM_CONTENT_TYPE,
      ...(status === 409 ? { 'retry-after': '1' } : {}),
    });
    return JSON.stringify(
      problem(
        status,
        `This request was taken over while it ran (its Idempotency-Key lease expired): ${state}. ` +
          'Its own response was not stored; retry to get the outcome of the key.',
        { instance: leading.instance },
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

/** The outcome headers of a response, lower-case names, as strings. */
function outcomeHeaders(reply: FastifyReply): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const name of OUTCOME_HEADERS) {
    const value = reply.getHeader(name);
    if (value !== undefined)
      headers[name] = Array.isArray(value) ? value.join(', ') : String(value);
  }
  return headers;
}

/** Replaces the status and outcome headers of a response about to be sent. */
function replaceResponse(reply: FastifyReply, status: number, headers: Record<string, string>) {
  for (const name of [...OUTCOME_HEADERS, 'content-length']) reply.removeHeader(name);
  void reply.code(status).headers(headers);
}

/** The serialised body Fastify is about to send; undefined for a stream. */
function bodyOf(
  payload: unknown,
): { text: string; bytes: number; encoding?: 'base64' } | undefined {
  if (payload === null || payload === undefined) return { text: '', bytes: 0 };
  if (typeof payload === 'string') return { text: payload, bytes: Buffer.byteLength(payload) };
  if (Buffer.isBuffer(payload)) {
    return { text: payload.toString('base64'), bytes: payload.length, encoding: 'base64' };
  }
  return undefined;
}

/** A stored response, in the current format or the one earlier versions wrote. */
function readStored(result: string): {
  statusCode: number;
  body: unknown;
  headers: Record<string, string>;
} {
  const stored = JSON.parse(result) as StoredResponse | LegacyStoredResponse;
  if ('v' in stored) {
    return {
      statusCode: stored.status_code,
      body: stored.encoding === 'base64' ? Buffer.from(stored.body, 'base64') : stored.body,
      headers: stored.headers,
    };
  }
  return {
    statusCode: stored.status_code,
    body: stored.body,
    headers: { 'content-type': stored.content_type },
  };
}
