import { SetMetadata } from '@nestjs/common';
import { WITH_LOCK_METADATA } from './lock.constants';

export interface WithLockMetadata {
  /** Builds the lock key from the method's arguments, e.g. `(table, ns) => \`lock:x:${table}:${ns}\``. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arguments of any decorated method
  key: (...args: any[]) => string;
  ttlMs?: number;
  waitTimeoutMs?: number;
  fair?: boolean;
  /** Shown as the holder's operation (default `Class.method`). */
  operation?: string;
}

/**
 * Runs the decorated provider method under a distributed lock (LockService.withLock, with lease
 * renewal). Stores metadata only; LockExplorer wraps the method at start-up and refuses bad
 * options there. The handle is available inside through `LockService.current()`.
 */
export const WithLock = (options: WithLockMetadata): MethodDecorator =>
  SetMetadata(WITH_LOCK_METADATA, options);
