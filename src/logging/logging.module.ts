import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Module, RequestMethod } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { LoggerModule } from 'nestjs-pino';
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

/** Probes hit these every few seconds; logging each one would drown everything else. */
const QUIET_PATHS = /^\/api\/v1\/vector\/health(\/|$|\?)/;

/** Structured JSON logs (pino), one line per request with its request id; secrets redacted. */
@Module({
  imports: [
    LoggerModule.forRootAsync({
      inject: [ConfigService],
      useFactory: (config: AppConfigService) => ({
        forRoutes: [{ path: '{*path}', method: RequestMethod.ALL }],
        pinoHttp: {
          level: config.get('LOG_LEVEL', { infer: true }),
          // Fastify has already assigned the id (see createApp); log lines carry the same one.
          genReqId: (req) => req.id ?? requestIdFor(req),
          customAttributeKeys: { reqId: 'request_id' },
          // Log lines written while handling a request carry its id as a top-level field.
          quietReqLogger: true,
          autoLogging: { ignore: (req) => QUIET_PATHS.test(req.url ?? '') },
          redact: {
            paths: [
              'req.headers.authorization',
              'req.headers["x-api-key"]',
              'req.headers.cookie',
              'req.headers["idempotency-key"]',
            ],
            censor: '[redacted]',
          },
          serializers: {
            req: (req: { method: string; url: string }) => ({ method: req.method, url: req.url }),
            res: (res: { statusCode: number }) => ({ status: res.statusCode }),
          },
        },
      }),
    }),
  ],
})
export class LoggingModule {}
