import { createHash } from 'node:crypto';
import {
  ExecutionContext,
  HttpException,
  Injectable,
  ServiceUnavailableException,
} from '@nestjs/common';
import { ThrottlerGuard } from '@nestjs/throttler';
import type { FastifyRequest } from 'fastify';
import { REQUIRED_SCOPE } from '../auth/auth.decorators';

/** The routes that cost something: writes and admin operations. */
export function limitedScope(context: ExecutionContext, reflector: ThrottlerGuard['reflector']) {
  const scope = reflector.getAllAndOverride<string | undefined>(REQUIRED_SCOPE, [
    context.getHandler(),
    context.getClass(),
  ]);
  return scope === 'write' || scope === 'admin' ? scope : undefined;
}

/**
 * Per-API-key rate limits on write and admin routes, counted in Redis so they hold across
 * replicas; 429 with Retry-After past the limit. Read routes and probes are not limited. If
 * Redis is unreachable the request fails closed with 503, as the write itself would.
 */
@Injectable()
export class RateLimitGuard extends ThrottlerGuard {
  protected override shouldSkip(context: ExecutionContext): Promise<boolean> {
    return Promise.resolve(limitedScope(context, this.reflector) === undefined);
  }

  /** The caller's key: its name once authenticated, else the credential sent (hashed), else the IP. */
  protected override getTracker(request: Record<string, unknown>): Promise<string> {
    const req = request as unknown as FastifyRequest & { caller?: { keyName: string } };
    if (req.caller) return Promise.resolve(`key:${req.caller.keyName}`);
    const credential = req.headers.authorization ?? req.headers['x-api-key'];
    if (typeof credential === 'string') {
      return Promise.resolve(`cred:${createHash('sha256').update(credential).digest('hex')}`);
    }
    return Promise.resolve(`ip:${req.ip}`);
  }

  override async canActivate(context: ExecutionContext): Promise<boolean> {
    try {
      return await super.canActivate(context);
    } catch (error) {
      if (error instanceof HttpException) throw error;
      throw new ServiceUnavailableException('The rate limiter is unavailable.');
    }
  }
}
