import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import { ApiKeyAuth } from './api-key-auth.service';
import { Scope } from './api-keys';
import { REQUIRED_SCOPE } from './auth.decorators';

/** The global guard: each route's @RequireScope (default `read`; `public` for probes). */
@Injectable()
export class AuthGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly auth: ApiKeyAuth,
  ) {}

  canActivate(context: ExecutionContext): boolean {
    const required =
      this.reflector.getAllAndOverride<Scope | 'public' | undefined>(REQUIRED_SCOPE, [
        context.getHandler(),
        context.getClass(),
      ]) ?? 'read';
    if (required !== 'public') {
      this.auth.authorize(context.switchToHttp().getRequest<FastifyRequest>(), required);
    }
    return true;
  }
}
