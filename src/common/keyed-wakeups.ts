/** A waiter's sleep that an event for one of its keys can cut short. */
export interface Wakeable {
  /** Sleeps `ms`, or less if woken (also by a wake that came while it was not sleeping). */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  dispose(): void;
}

/**
 * Wakes sleeping waiters by key: lock waiters on release, idempotency followers on completion.
 * Notifications are hints; waiters always sleep with a bound and re-check.
 */
export class KeyedWakeups {
  private readonly waiters = new Map<string, Set<() => void>>();

  notify(key: string): void {
    for (const wake of this.waiters.get(key) ?? []) wake();
  }

  /** Wakes every waiter, e.g. when events may have been missed. */
  notifyAll(): void {
    for (const wakes of this.waiters.values()) for (const wake of wakes) wake();
  }

  waiter(keys: readonly string[]): Wakeable {
    let wakeNow: (() => void) | undefined;
    let pending = false;
    const wake = () => {
      pending = true;
      wakeNow?.();
    };
    for (const key of keys) {
      const set = this.waiters.get(key) ?? new Set();
      set.add(wake);
      this.waiters.set(key, set);
    }
    return {
      sleep: (ms, signal) =>
        new Promise<void>((resolve, reject) => {
          signal?.throwIfAborted();
          if (pending) {
            pending = false;
            resolve();
            return;
          }
          const finish = (error?: unknown) => {
            clearTimeout(timer);
            signal?.removeEventListener('abort', abort);
            wakeNow = undefined;
            pending = false;
            if (error === undefined) resolve();
            // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- the abort reason, as given
            else reject(error);
          };
          const abort = () => finish(signal?.reason ?? new Error('aborted'));
          const timer = setTimeout(() => finish(), ms);
          wakeNow = () => finish();
          signal?.addEventListener('abort', abort, { once: true });
        }),
      dispose: () => {
        for (const key of keys) {
          const set = this.waiters.get(key);
          set?.delete(wake);
          if (set?.size === 0) this.waiters.delete(key);
        }
      },
    };
  }
}
