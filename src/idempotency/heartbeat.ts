import { Logger } from '@nestjs/common';
import { IdempotencyStore } from './idempotency-store';

/**
 * Renews a leader's in-progress record every lease/3 while its work runs, so work longer than the
 * lease is never started twice. Aborts `controller` if the record was taken over (the leader
 * was presumed dead); transient store errors are retried on the next beat.
 */
export function startHeartbeat(
  store: IdempotencyStore,
  key: string,
  owner: string,
  leaseMs: number,
  controller: AbortController,
  logger: Logger,
): { stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const beat = async () => {
    try {
      const alive = await store.heartbeat(key, owner, leaseMs);
      if (stopped) return;
      if (!alive) {
        logger.warn(`${key}: in-progress record lost to another leader`);
        controller.abort(new Error(`leadership of ${key} was lost`));
        return;
      }
    } catch (error) {
      if (stopped) return;
      logger.warn(`${key}: heartbeat failed: ${String(error)}`);
    }
    schedule();
  };
  const schedule = () => {
    timer = setTimeout(() => void beat(), leaseMs / 3);
    timer.unref();
  };
  schedule();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
