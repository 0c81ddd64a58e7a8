import { Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { createApp } from './app.factory';
import { ConfigValidationError, Env } from './config/env.schema';
import { ShutdownState } from './lifecycle/shutdown-state';

const logger = new Logger('Bootstrap');

/**
 * Graceful shutdown (see ShutdownState): readiness fails and long work stops at once, the server
 * keeps serving for SHUTDOWN_DELAY_MS, stops accepting and drains in-flight requests; then held
 * locks are released, and Redis and Postgres are closed. If that takes longer than
 * SHUTDOWN_GRACE_MS the process exits with status 1 rather than hang.
 */
function handleSignals(app: NestFastifyApplication, graceMs: number): void {
  let closing = false;
  const shutdown = (signal: NodeJS.Signals) => {
    logger.log(`received ${signal}`);
    if (closing) return;
    closing = true;
    app.get(ShutdownState).begin(signal);
    setTimeout(() => {
      logger.error(`shutdown did not finish within ${graceMs} ms; exiting`);
      process.exit(1);
    }, graceMs).unref();
    app
      .close()
      .then(() => logger.log('shutdown complete'))
      .catch((error: unknown) => {
        logger.error(`shutdown failed: ${String(error)}`);
        process.exitCode = 1;
      });
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
}

async function bootstrap(): Promise<void> {
  const app = await createApp();
  const config = app.get<ConfigService<Env, true>>(ConfigService);
  handleSignals(app, config.get('SHUTDOWN_GRACE_MS', { infer: true }));
  const port = config.get('PORT', { infer: true });
  const host = config.get('HOST', { infer: true });
  await app.listen({ port, host });
  logger.log(`listening on http://${host}:${port}/api/v1/vector`);
}

bootstrap().catch((error: unknown) => {
  // One line for configuration errors: they are the operator's to fix, not a crash to debug.
  if (error instanceof ConfigValidationError) {
    process.stderr.write(`${error.message}\n`);
  } else {
    process.stderr.write(
      `start-up failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
  }
  process.exit(1);
});
