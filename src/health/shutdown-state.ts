import { BeforeApplicationShutdown, Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { setTimeout as delay } from 'node:timers/promises';
import { Env } from '../config/env.schema';

/**
 * Tracks whether the instance is shutting down. Readiness fails from the first moment, then the
 * instance keeps serving for SHUTDOWN_DELAY_MS so load balancers stop routing to it before the
 * server stops accepting connections.
 */
@Injectable()
export class ShutdownState implements BeforeApplicationShutdown {
  private readonly logger = new Logger('Shutdown');
  private draining = false;

  constructor(private readonly config: ConfigService<Env, true>) {}

  get isDraining(): boolean {
    return this.draining;
  }

  async beforeApplicationShutdown(signal?: string): Promise<void> {
    this.draining = true;
    const delayMs = this.config.get('SHUTDOWN_DELAY_MS', { infer: true });
    this.logger.log(`shutting down${signal ? ` on ${signal}` : ''}; readiness now fails`);
    if (delayMs > 0) await delay(delayMs);
  }
}
