import type { FastifyInstance, FastifyRequest } from 'fastify';
import { storage } from 'nestjs-pino/storage';
import type { Logger } from 'pino';

/** Probes hit these every few seconds; logging each one would drown everything else. */
const QUIET_PATHS = /^\/api\/v1\/vector\/health(\/|$|\?)/;

/**
 * What nestjs-pino's PinoLogger reads for the request being handled: a logger bound to the
 * request id. It is made on the first line actually logged, since most requests log none.
 */
class RequestLogContext {
  private bound?: Logger;
  readonly responseLogger = undefined;

  constructor(
    private readonly root: Logger,
    private readonly requestId: string,
  ) {}

  get logger(): Logger {
    return (this.bound ??= this.root.child({ request_id: this.requestId }));
  }

  /** PinoLogger.assign() adds fields by replacing the logger. */
  set logger(logger: Logger) {
    this.bound = logger;
  }
}

/**
 * One access-log line per request (request id, method, URL, status, time), and the request id on
 * every line logged while it is handled (guards, pipes, handler, exception filter). pino-http did
 * this before as Express-style middleware that built two child loggers per request: a fifth of
 * the service's CPU per search. Here it is two Fastify hooks, and a child logger only when a
 * request logs something.
 */
export function logRequests(fastify: FastifyInstance, root: Logger): void {
  // preHandler runs after the body is parsed, right before Nest's guards: everything from there
  // on, synchronous or awaited, runs inside this context.
  fastify.addHook('preHandler', (request, _reply, done) => {
    storage.run(new RequestLogContext(root, request.id), done);
  });
  const logged = (request: FastifyRequest, level: 'info' | 'error') =>
    root.isLevelEnabled(level) && !QUIET_PATHS.test(request.url);
  fastify.addHook('onResponse', (request, reply, done) => {
    const level = reply.statusCode >= 500 ? 'error' : 'info';
    if (logged(request, level)) {
      root[level](
        {
          ...requestFields(request),
          res: { status: reply.statusCode },
          responseTime: Math.round(reply.elapsedTime),
        },
        level === 'error' ? 'request errored' : 'request completed',
      );
    }
    done();
  });
  fastify.addHook('onRequestAbort', (request, done) => {
    if (logged(request, 'info')) root.info(requestFields(request), 'request aborted');
    done();
  });
}

function requestFields(request: FastifyRequest) {
  return { request_id: request.id, req: { method: request.method, url: request.url } };
}
