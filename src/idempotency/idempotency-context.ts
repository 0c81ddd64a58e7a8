import { AsyncLocalStorage } from 'node:async_hooks';

/** What code running as the leader of an idempotency key can see of its run. */
interface LeaderContext {
  key: string;
  signal: AbortSignal;
}

const leaderContext = new AsyncLocalStorage<LeaderContext>();

/** Runs `fn` (and everything it awaits) as the leading run of `key`. */
export function runAsLeader<T>(key: string, signal: AbortSignal, fn: () => T): T {
  return leaderContext.run({ key, signal }, fn);
}

/** The abort signal of the innermost leading run around the caller, if any. */
export function currentLeaderSignal(): AbortSignal | undefined {
  return leaderContext.getStore()?.signal;
}
