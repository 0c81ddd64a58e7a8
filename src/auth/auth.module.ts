import { Global, Module } from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { ApiKeyAuth } from './api-key-auth.service';
import { AuthGuard } from './auth.guard';

/** API-key authentication for every route (see ApiKeyAuth). */
@Global()
@Module({
  providers: [ApiKeyAuth, { provide: APP_GUARD, useClass: AuthGuard }],
  exports: [ApiKeyAuth],
})
export class AuthModule {}
