import { ForbiddenException, Injectable, Logger, UnauthorizedException } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { FastifyRequest } from 'fastify';
import { Env } from '../config/env.schema';
import { ApiKey, Caller, Scope, allows, findKey, parseApiKeys } from './api-keys';

declare module 'fastify' {
  interface FastifyRequest {
    caller?: Caller;
  }
}

/**
 * API keys from API_KEYS, sent as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`.
 * 401 without a valid key, 403 with too little scope. With no keys configured the service runs
 * open outside production (one warning at start-up); production refuses to start without keys.
 */
@Injectable()
export class ApiKeyAuth {
  private readonly logger = new Logger('Auth');
  private readonly keys: ApiKey[];

  constructor(config: ConfigService<Env, true>) {
    this.keys = parseApiKeys(config.get('API_KEYS', { infer: true }));
    if (this.keys.length === 0) {
      if (config.get('NODE_ENV', { infer: true }) === 'production') {
        throw new Error('API_KEYS is required in production: refusing to start without auth');
      }
      this.logger.warn('API_KEYS is not set: every endpoint is open (not allowed in production)');
    }
  }

  get enabled(): boolean {
    return this.keys.length > 0;
  }

  /** Authenticates the request (setting `request.caller`) and checks its key grants `required`. */
  authorize(request: FastifyRequest, required: Scope): void {
    if (!this.enabled) return;
    const secret = secretOf(request);
    const key = secret === undefined ? undefined : findKey(this.keys, secret);
    if (!key) {
      throw new UnauthorizedException(
        'A valid API key is required (Authorization: Bearer <key> or X-API-Key).',
      );
    }
    request.caller = { keyName: key.name, scope: key.scope };
    if (!allows(key.scope, required)) {
      throw new ForbiddenException(
        `This endpoint needs the ${required} scope; key ${key.name} has ${key.scope}.`,
      );
    }
  }
}

function secretOf(request: FastifyRequest): string | undefined {
  const authorization = request.headers.authorization;
  if (typeof authorization === 'string') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (match) return match[1];
  }
  const apiKey = request.headers['x-api-key'];
  return typeof apiKey === 'string' && apiKey !== '' ? apiKey : undefined;
}
