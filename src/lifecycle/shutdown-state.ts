import { BeforeApplicationShutdown, Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { setTimeout as delay } from 'node:timers/promises';
import { Env } from '../config/env.schema';

/**
 * The instance's shutdown, in order: readiness fails and long work is told to stop (signal), the
 * instance keeps serving for SHUTDOWN_DELAY_MS so load balancers stop routing to it, then the
 * server drains in-flight requests; only after that do held locks and idempotency records go
 * (onApplicationShutdown of LockService and IdempotencyService), then the connections.
 */
@Injectable()
export class ShutdownState implements BeforeApplicationShutdown {
  private readonly logger = new Logger('Shutdown');
  private readonly stopping = new AbortController();

  constructor(private readonly config: ConfigService<Env, true>) {}

  get isDraining(): boolean {
    return this.stopping.signal.aborted;
  }

  /**
   * Aborted when shutdown begins. Work that would outlast the drain (a rebuild: minutes) stops
   * on it and gives its lock and idempotency record back, so another replica takes it over at
   * once; short requests just finish.
   */
  get signal(): AbortSignal {
    return this.stopping.signal;
  }

  /** Readiness fails and long work stops from now on. Idempotent. */
  begin(signal?: string): void {
    if (this.isDraining) return;
    this.logger.log(`shutting down${signal ? ` on ${signal}` : ''}; readiness now fails`);
    this.stopping.abort(new ShuttingDownError());
  }

  async beforeApplicationShutdown(signal?: string): Promise<void> {
    this.begin(signal);
    const delayMs = this.config.get('SHUTDOWN_DELAY_MS', { infer: true });
    if (delayMs > 0) await delay(delayMs);
  }
}

/** Why long work stopped: this instance is shutting down (another one can do it). */
export class ShuttingDownError extends Error {
  override readonly name = 'ShuttingDownError';
  constructor() {
    super('this instance is shutting down');
  }
}
