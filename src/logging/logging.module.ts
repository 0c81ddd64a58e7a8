import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Module } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { LoggerModule } from 'nestjs-pino';
import pino, { Logger } from 'pino';
import { AppConfigService } from '../config/app-config.module';

export const REQUEST_ID_HEADER = 'x-request-id';
// Callers may pass their own id for tracing across services; anything else gets a fresh UUID.
const ACCEPTABLE_REQUEST_ID = /^[\w.:-]{1,128}$/;

/** Fastify's request id: the caller's `x-request-id` when acceptable, else a fresh UUID. */
export function requestIdFor(req: IncomingMessage): string {
  const incoming = req.headers[REQUEST_ID_HEADER];
  return typeof incoming === 'string' && ACCEPTABLE_REQUEST_ID.test(incoming)
    ? incoming
    : randomUUID();
}

/** The root pino logger: Nest's Logger writes through it, and so do the request logs. */
export const ROOT_LOGGER = Symbol('ROOT_LOGGER');

@Module({
  providers: [
    {
      provide: ROOT_LOGGER,
      inject: [ConfigService],
      useFactory: (config: AppConfigService): Logger =>
        pino({
          level: config.get('LOG_LEVEL', { infer: true }),
          // Secrets never reach a log line, even if a header object is logged by mistake.
          redact: {
            paths: [
              'req.headers.authorization',
              'req.headers["x-api-key"]',
              'req.headers.cookie',
              'req.headers["idempotency-key"]',
            ],
            censor: '[redacted]',
          },
        }),
    },
  ],
  exports: [ROOT_LOGGER],
})
class RootLoggerModule {}

/**
 * Structured JSON logs (pino) through Nest's Logger; secrets redacted. Requests are logged by
 * Fastify hooks (request-logging.ts, installed by createApp), so nestjs-pino's pino-http
 * middleware is applied to no route.
 */
@Module({
  imports: [
    RootLoggerModule,
    LoggerModule.forRootAsync({
      imports: [RootLoggerModule],
      inject: [ROOT_LOGGER],
      useFactory: (logger: Logger) => ({ pinoHttp: { logger }, forRoutes: [] }),
    }),
  ],
  exports: [RootLoggerModule],
})
export class LoggingModule {}
