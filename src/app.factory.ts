import { Type } from '@nestjs/common';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Logger } from 'nestjs-pino';
import { Registry } from 'prom-client';
import { AppModule } from './app.module';
import { ShutdownState } from './lifecycle/shutdown-state';
import { serveOpenApi } from './common/openapi';
import { PROBLEM_CONTENT_TYPE, problem } from './common/problem';
import { instrumentHttp } from './metrics/http-metrics';
import { validateEnv } from './config/env.schema';
import { REQUEST_ID_HEADER, ROOT_LOGGER, requestIdFor } from './logging/logging.module';
import { logRequests } from './logging/request-logging';

export const API_PREFIX = 'api/v1/vector';

export interface CreateAppOptions {
  /** Extra modules (tests register probe controllers this way). */
  extraModules?: Type[];
}

/** Builds the Fastify-based Nest application exactly as production runs it, without listening. */
export async function createApp(options: CreateAppOptions = {}): Promise<NestFastifyApplication> {
  // Building the module loads `.env` into process.env and validates it (ConfigModule), so a bad
  // variable stops start-up here, before Nest boots, with one clear line.
  const appModule = AppModule.forRoot(options.extraModules);
  const env = validateEnv(process.env);
  const adapter = new FastifyAdapter({
    bodyLimit: env.BODY_LIMIT_BYTES,
    // Requests are logged by our own hooks (logRequests); Fastify assigns the id they carry.
    logger: false,
    genReqId: requestIdFor,
    // On close, drop idle keep-alive connections at once; in-flight requests still complete.
    forceCloseConnections: 'idle',
    // Lock keys (path parameters) may be 400 characters, more when percent-encoded.
    routerOptions: { maxParamLength: 2_048 },
    // Router-level failures (malformed URL, over-long parameter) as problem+json too.
    frameworkErrors: (error: FastifyError, _request: FastifyRequest, reply: FastifyReply) => {
      const status = error.statusCode ?? 400;
      void reply
        .status(status)
        .header('content-type', PROBLEM_CONTENT_TYPE)
        .send(problem(status, error.message));
    },
    return503OnClosing: true,
    // The app has no Nest middleware (requests are logged by Fastify hooks), so the Express
    // compatibility layer, which ran on every request, is left out.
    skipMiddie: true,
  });
  const app = await NestFactory.create<NestFastifyApplication>(appModule, adapter, {
    bufferLogs: true,
    abortOnError: false,
  });
  app.useLogger(app.get(Logger));
  // Nest would flush the start-up lines it buffered only on listen(); apps that are only
  // initialised (tests, scripts) would buffer every later line too.
  app.flushLogs();
  // /metrics sits at the root, where Prometheus looks by default.
  app.setGlobalPrefix(API_PREFIX, { exclude: ['metrics'] });
  const fastify = app.getHttpAdapter().getInstance();
  logRequests(fastify, app.get(ROOT_LOGGER));
  instrumentHttp(fastify, app.get(Registry));
  serveOpenApi(app);
  const shutdown = app.get(ShutdownState);
  fastify.addHook('onRequest', (request, reply, done) => {
    void reply.header(REQUEST_ID_HEADER, request.id);
    done();
  });
  // While draining, each connection ends with its response: a keep-alive connection (Fastify
  // keeps them 72 s) whose request was in flight when the server closed would otherwise hold
  // the shutdown until the grace period kills the process.
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (shutdown.isDraining) void reply.header('connection', 'close');
    done(null, payload);
  });

  return app;
}
