import { randomBytes } from 'node:crypto';
import { AsyncLocalStorage } from 'node:async_hooks';
import { hostname } from 'node:os';
import { Inject, Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { KeyedWakeups, Wakeable } from '../common/keyed-wakeups';
import { definedOnly } from '../common/objects';
import { HeldLock, HeldLockHooks } from './held-lock';
import { AimedForceRelease, AttemptResult, HolderEncoder, LockBackend } from './lock-backend';
import { assertTtlMs, assertWaitTimeoutMs } from './lock-durations';
import { LOCK_BACKEND } from './lock.constants';
import { LockBackendError, LockHolderChangedError, LockNotAcquiredError } from './lock.errors';
import { assertLockKey } from './lock-keys';
import { LockMetrics } from './lock.metrics';
import { LOCK_MODULE_OPTIONS, LockModuleOptions } from './lock.module-definition';
import {
  AcquireOptions,
  ForceReleaseResult,
  LockHandle,
  LockStatus,
  MultiLockHandle,
  WithLockOptions,
} from './lock.types';

const DEFAULTS = {
  prefix: 'lock:',
  defaultTtlMs: 60_000,
  defaultWaitTimeoutMs: 30_000,
  backoffMs: 50,
  maxBackoffMs: 1_000,
  fairStaleMs: 2_000,
};

const EXPIRY_SWEEP_MS = 1_000;
// A force-release without a fence aims at the holder it has just read; if the lock changes
// hands in between, it reads again, this many times at most.
const FORCE_RELEASE_READS = 5;
// Attempts being cleared while the backend fails; beyond this many (an outage under load),
// further ones are left to expire with their TTL.
const MAX_PENDING_ABANDONS = 1_000;
// Lock keys repeat (one per resource): each is checked once, in a bounded memory.
const MAX_CHECKED_KEYS = 10_000;

/** How a public method acquires: shared constants, so the hot path allocates nothing for it. */
interface AcquireMode {
  /** Wait up to waitTimeoutMs, then throw LockNotAcquiredError; else try once, null if taken. */
  waits: boolean;
  /** Renew the lease unless the caller says otherwise. */
  renewByDefault: boolean;
}

const WAIT: AcquireMode = { waits: true, renewByDefault: false };
const TRY_ONCE: AcquireMode = { waits: false, renewByDefault: false };
const WAIT_AND_RENEW: AcquireMode = { waits: true, renewByDefault: true };

/**
 * Distributed locks with fencing tokens. Acquisition retries with jittered exponential backoff
 * and is woken early when the key is released; held leases can be renewed by a watchdog that
 * aborts the holder's signal before the lease could expire unnoticed.
 */
@Injectable()
export class LockService implements OnApplicationShutdown {
  private readonly logger = new Logger('LockService');
  private readonly settings: typeof DEFAULTS;
  readonly instanceId: string;
  private readonly wakeups = new KeyedWakeups();
  private unsubscribe?: () => void;
  private readonly held = new Set<HeldLock>();
  private readonly context = new AsyncLocalStorage<HeldLock[]>();
  private readonly hooks: HeldLockHooks;
  private readonly tokenPrefix = `${randomBytes(12).toString('base64url')}.`;
  private readonly holders: HolderEncoder;
  private readonly checkedKeys = new Set<string>();
  private sequence = 0;
  private closed = false;
  private pendingAbandons = 0;
  private readonly untrack: () => void;
  // Handles nobody watches have no timer of their own; this notices the ones left to expire.
  private readonly expirySweep: NodeJS.Timeout;

  constructor(
    @Inject(LOCK_BACKEND) private readonly backend: LockBackend,
    @Inject(LOCK_MODULE_OPTIONS) private readonly options: LockModuleOptions,
    private readonly metrics: LockMetrics,
  ) {
    this.settings = { ...DEFAULTS, ...definedOnly(options) };
    this.instanceId =
      options.instanceId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.holders = new HolderEncoder(this.instanceId, process.pid);
    this.hooks = {
      settled: (lock, lost, now) => {
        this.held.delete(lock);
        const metrics = this.metrics.of(lock.operation);
        if (lost) metrics.lost++;
        metrics.holdSeconds.observe((now - lock.acquiredAt) / 1000);
      },
      renewalFailed: (lock, error) => {
        this.metrics.of(lock.operation).errors++;
        this.logger.warn(`renewal of ${lock.keys.join(', ')} failed: ${String(error)}`);
      },
    };
    this.untrack = metrics.track(this.held);
    this.expirySweep = setInterval(() => {
      for (const lock of this.held) lock.checkExpiry();
    }, EXPIRY_SWEEP_MS);
    this.expirySweep.unref();
  }

  get prefix(): string {
    return this.settings.prefix;
  }

  get backendKind(): LockBackend['kind'] {
    return this.backend.kind;
  }

  /** Waits up to `waitTimeoutMs` for the lock; throws LockNotAcquiredError after that. */
  acquire(key: string, options: AcquireOptions & { renew?: boolean } = {}): Promise<LockHandle> {
    return this.acquireKeys([key], options, WAIT) as Promise<LockHandle>;
  }

  /** One attempt, no waiting: the handle, or null when the lock is taken. */
  tryAcquire(
    key: string,
    options: Omit<AcquireOptions, 'waitTimeoutMs'> & { renew?: boolean } = {},
  ): Promise<LockHandle | null> {
    return this.acquireKeys([key], options, TRY_ONCE);
  }

  /**
   * Takes every key or none, in one atomic step. Keys are sorted, so two callers asking for
   * overlapping sets never hold parts of each other's (on Cluster they must share a hash tag).
   */
  async acquireMany(
    keys: string[],
    options: Omit<AcquireOptions, 'fair'> & { renew?: boolean } = {},
  ): Promise<MultiLockHandle> {
    const sorted = [...new Set(keys)].sort();
    if (sorted.length === 0) throw new RangeError('acquireMany needs at least one key');
    return (await this.acquireKeys(sorted, { ...options, fair: false }, WAIT))!;
  }

  /**
   * Runs `fn` holding the lock and always releases it, also when `fn` throws. The lease is
   * renewed every ttl/3 (unless `renew: false`); `handle.signal` aborts if it is lost.
   */
  async withLock<T>(
    key: string,
    fn: (handle: LockHandle) => Promise<T> | T,
    options: WithLockOptions = {},
  ): Promise<T> {
    const handle = (await this.acquireKeys([key], options, WAIT_AND_RENEW))!;
    try {
      const stack = this.context.getStore() ?? [];
      return await this.context.run([...stack, handle], () => fn(handle));
    } finally {
      await handle.release().catch((error: unknown) => {
        // The caller's result (or error) matters more. The release is retried in the background
        // until the lease would run out anyway: after a Redis failover the lock was replicated
        // to the new master, and would otherwise hold the key there for the rest of its TTL.
        this.logger.warn(`release of ${key} failed, retrying: ${String(error)}`);
        void this.abandon([...handle.keys], handle.token, false, handle.expiresAt);
      });
    }
  }

  /** The innermost lock held through withLock (or @WithLock) in this async context. */
  current(key?: string): LockHandle | undefined {
    const stack = this.context.getStore() ?? [];
    for (let i = stack.length - 1; i >= 0; i--) {
      if (key === undefined || stack[i].keys.includes(key)) return stack[i];
    }
    return undefined;
  }

  async status(key: string): Promise<LockStatus> {
    assertLockKey(key, this.settings.prefix);
    return this.backend.status(key);
  }

  /**
   * Removes a stuck lock, for operators. Only keys under the lock prefix. Acts on one holder
   * only: the one with `fence` (as status() showed it), or else the one holding it when this is
   * called; throws LockHolderChangedError when another holder has taken its place. So a repeat
   * (a resent script after a lost reply, a retried request) can never evict the next holder.
   * Bumps the fence so the old holder's later fenced writes fail, and logs an audit line, also
   * when the onForceRelease hook throws.
   */
  async forceRelease(
    key: string,
    options: { fence?: number; by?: string } = {},
  ): Promise<ForceReleaseResult> {
    assertLockKey(key, this.settings.prefix);
    if (options.fence !== undefined && !(Number.isSafeInteger(options.fence) && options.fence >= 0))
      throw new RangeError(`fence must be a whole number, 0 or more, got ${options.fence}`);
    let result: AimedForceRelease | undefined;
    let failure: string | undefined;
    try {
      result = await this.forceReleaseOne(key, options.fence);
      if (result.released) {
        this.metrics.forcedReleases.inc();
        await this.options.onForceRelease?.(result);
      }
    } catch (error) {
      failure = error instanceof Error ? error.message : 'unknown error';
      throw error;
    } finally {
      this.logger.warn({
        msg: 'lock force-release',
        audit: true,
        lock_key: key,
        released: result?.released ?? null,
        previous_holder: result?.previousHolder ?? null,
        fence: result?.fence ?? null,
        holder_fence: options.fence ?? null,
        ...(result?.holderChanged && { refused: 'held by another holder', holder: result.holder }),
        ...(failure !== undefined && { error: failure }),
        by: options.by ?? 'unknown',
      });
    }
    if (result.holderChanged) {
      throw new LockHolderChangedError(key, options.fence ?? result.fence, result.fence);
    }
    return {
      key,
      released: result.released,
      previousHolder: result.previousHolder,
      fence: result.fence,
    };
  }

  /** The backend's force-release, aimed at the holder with `fence`, or the current one. */
  private async forceReleaseOne(
    key: string,
    fence: number | undefined,
  ): Promise<AimedForceRelease> {
    if (fence !== undefined) return this.backend.forceRelease(key, fence);
    for (let read = 1; ; read++) {
      const current = await this.backend.status(key);
      const result = await this.backend.forceRelease(key, current.fence);
      if (!result.holderChanged || read === FORCE_RELEASE_READS) return result;
    }
  }

  /**
   * After the HTTP server has drained (not at module destroy, which Nest runs before it): a
   * request still in flight keeps its lock to the end. Runs before RedisModule's own shutdown
   * (a global module, so it shuts down last).
   */
  async onApplicationShutdown(): Promise<void> {
    this.closed = true;
    clearInterval(this.expirySweep);
    this.untrack();
    this.unsubscribe?.();
    // Leases still held by this instance are handed back rather than left to expire.
    await Promise.allSettled([...this.held].map((lock) => lock.release()));
    await this.backend.close();
  }

  private async acquireKeys(
    keys: string[],
    request: WithLockOptions,
    mode: AcquireMode,
  ): Promise<HeldLock | null> {
    this.assertKeys(keys);
    const ttlMs = request.ttlMs ?? this.settings.defaultTtlMs;
    const waitMs = mode.waits ? (request.waitTimeoutMs ?? this.settings.defaultWaitTimeoutMs) : 0;
    assertTtlMs(ttlMs);
    assertWaitTimeoutMs(waitMs);
    const operation = request.operation ?? 'unnamed';
    const metrics = this.metrics.of(operation);
    // Unique per acquisition; no colon (values are `<token>:<holder>`).
    const token = `${this.tokenPrefix}${(this.sequence++).toString(36)}`;
    const holder = this.holders.encode(request.operation, Date.now());
    const fair = request.fair === true && keys.length === 1;
    const started = performance.now();
    const deadline = started + waitMs;
    metrics.attempts++;
    // A caller that will wait asks the backend to announce the release of the lock in its way
    // (a fair waiter is always announced); it listens for it from its first conflict on.
    const willWait = !fair && waitMs > 0;
    let wake: Wakeable | undefined;
    try {
      for (let attempt = 0; ; attempt++) {
        const leaseStartedAt = attempt === 0 ? started : performance.now();
        let result: AttemptResult;
        try {
          result = await (fair
            ? this.backend.tryAcquireFair(keys[0], token, ttlMs, holder, this.settings.fairStaleMs)
            : this.backend.tryAcquire(keys, token, ttlMs, holder, willWait));
        } catch (error) {
          metrics.errors++;
          throw error instanceof LockBackendError
            ? error
            : new LockBackendError(keys.join(', '), error);
        }
        if (result.acquired) {
          const grantedAt = performance.now();
          const lock = new HeldLock(
            this.backend,
            this.hooks,
            this.logger,
            keys,
            token,
            result.fences,
            ttlMs,
            leaseStartedAt,
            request.renew ?? mode.renewByDefault,
            operation,
            grantedAt,
          );
          this.held.add(lock);
          metrics.acquired++;
          metrics.waitSeconds.observe((grantedAt - started) / 1000);
          return lock;
        }
        metrics.conflicts++;
        const left = deadline - performance.now();
        if (left <= 0) {
          if (!mode.waits) {
            if (fair) await this.leaveQueue(keys[0], token);
            return null;
          }
          metrics.timeouts++;
          // Thrown inside the try: the catch below leaves the fair queue.
          throw new LockNotAcquiredError(
            keys.join(', '),
            Math.round(performance.now() - started),
            result.holderTtlMs ?? undefined,
          );
        }
        let delay = this.backoff(attempt);
        // The holder's lease ends then at the latest: try again right after.
        if (result.holderTtlMs !== null) delay = Math.min(delay, result.holderTtlMs + 1);
        // A fair waiter must keep showing up, or it is skipped as dead.
        if (fair) delay = Math.min(delay, this.settings.fairStaleMs / 4);
        wake ??= this.wakeOnRelease(keys);
        await wake.sleep(Math.min(delay, left), request.signal);
      }
    } catch (error) {
      // Gave up (timeout, abort) or the backend failed. An attempt whose reply was lost may
      // have taken the keys under our token, or taken some of them: they go, as does our place
      // in the fair queue. Awaited unless the backend is failing, which it must not prolong.
      const abandoned = this.abandon(keys, token, fair, performance.now() + ttlMs);
      if (!(error instanceof LockBackendError)) await abandoned;
      throw error;
    } finally {
      wake?.dispose();
    }
  }

  /**
   * Compare-and-deletes whatever `token` may hold of `keys` and leaves the fair queue. Retried
   * with backoff while the backend fails, until `until`: by then a lease that a lost attempt
   * took has run out by itself.
   */
  private async abandon(
    keys: string[],
    token: string,
    fair: boolean,
    until: number,
  ): Promise<void> {
    let pending = false;
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await Promise.all([
            this.backend.release(keys, token),
            fair ? this.backend.leaveQueue(keys[0], token) : undefined,
          ]);
          return;
        } catch (error) {
          const left = until - performance.now();
          const crowded = !pending && this.pendingAbandons >= MAX_PENDING_ABANDONS;
          if (left <= 0 || this.closed || crowded) {
            this.logger.warn(
              `could not clear an abandoned attempt on ${keys.join(', ')}, it expires with its TTL: ${String(error)}`,
            );
            return;
          }
          if (!pending) {
            pending = true;
            this.pendingAbandons++;
          }
          await new Promise((resolve) =>
            setTimeout(resolve, Math.min(left, this.backoff(attempt))).unref(),
          );
        }
      }
    } finally {
      if (pending) this.pendingAbandons--;
    }
  }

  private assertKeys(keys: string[]): void {
    for (const key of keys) {
      if (this.checkedKeys.has(key)) continue;
      assertLockKey(key, this.settings.prefix);
      if (this.checkedKeys.size >= MAX_CHECKED_KEYS) this.checkedKeys.clear();
      this.checkedKeys.add(key);
    }
  }

  /** Best effort: a fair waiter left in the queue is skipped once it has not been seen for a while. */
  private async leaveQueue(key: string, token: string): Promise<void> {
    await this.backend.leaveQueue(key, token).catch(() => undefined);
  }

  /** Full-jitter exponential backoff: uniform in [0.5, 1] × min(max, base × 2^attempt). */
  private backoff(attempt: number): number {
    const ceiling = Math.min(this.settings.maxBackoffMs, this.settings.backoffMs * 2 ** attempt);
    return ceiling * (0.5 + Math.random() / 2);
  }

  /** Lets a waiter sleep until its backoff ends or one of its keys is released, whichever is first. */
  private wakeOnRelease(keys: string[]): Wakeable {
    this.unsubscribe ??= this.backend.onRelease((key) =>
      key === null ? this.wakeups.notifyAll() : this.wakeups.notify(key),
    );
    return this.wakeups.waiter(keys);
  }
}
