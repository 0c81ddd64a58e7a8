import { randomBytes } from 'node:crypto';
import { Inject, Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { KeyedWakeups, Wakeable } from '../common/keyed-wakeups';
import { definedOnly } from '../common/objects';
import { currentLeaderSignal, runAsLeader } from './idempotency-context';
import { IdempotencyLease } from './idempotency-lease';
import { IdempotencyStore, beginOrClear } from './idempotency-store';
import { IdempotencyLeaseLostError, IdempotencyUsageError } from './idempotency.errors';
import { IdempotencyMetrics } from './idempotency.metrics';
import {
  IDEMPOTENCY_MODULE_OPTIONS,
  IDEMPOTENCY_STORE,
  IdempotencyModuleOptions,
  maxResultBytesOf,
} from './idempotency.module-definition';
import { IdempotencyConfig, SingleflightOutcome, WorkerContext } from './idempotency.types';
import { encodeResult } from './result-json';

/** The seed's defaults. */
const SEED_DEFAULTS = {
  ttl_seconds: 3_600,
  in_progress_ttl: 300,
  wait_timeout_ms: 5_000,
  poll_interval_ms: 150,
};

const KEY_BODY = /^[A-Za-z0-9_:.\-@/{}=+]{1,400}$/;

interface Resolved {
  scope: string;
  ttlMs: number;
  leaseMs: number;
  waitTimeoutMs: number;
  pollIntervalMs: number;
  force: boolean;
}

/**
 * Single-flight with a result cache, across processes: the first caller of a key leads and runs
 * the worker while heartbeating its in-progress record; the others wait for its result
 * (notified on completion, polling as the fallback) and replay it. A leader that dies stops
 * heartbeating, its record expires, and a later caller takes over.
 *
 * One key, one answer: a leader that lost its lease (paused, cut off from Redis) never hands its
 * own result to its caller; the caller gets the key's stored result, or IdempotencyLeaseLostError
 * when there is none yet. Results larger than `maxResultBytes` are answered but not stored.
 */
@Injectable()
export class IdempotencyService implements OnApplicationShutdown {
  private readonly logger = new Logger('IdempotencyService');
  private readonly defaults: typeof SEED_DEFAULTS;
  private readonly prefix: string;
  private readonly maxResultBytes: number;
  private readonly wakeups = new KeyedWakeups();
  private unsubscribe?: Promise<() => void>;

  constructor(
    @Inject(IDEMPOTENCY_STORE) private readonly store: IdempotencyStore,
    @Inject(IDEMPOTENCY_MODULE_OPTIONS) options: IdempotencyModuleOptions,
    private readonly metrics: IdempotencyMetrics,
  ) {
    this.defaults = { ...SEED_DEFAULTS, ...definedOnly(options.defaults ?? {}) };
    this.prefix = options.prefix ?? 'idem:';
    this.maxResultBytes = maxResultBytesOf(options);
  }

  /**
   * The abort signal of the leading run around the caller: inside an @Idempotent method (or a
   * singleflight worker, which also gets it as `context.signal`), aborted with an
   * IdempotencyLeaseLostError once the run loses its lease (a renewal finds the record taken
   * over, or none succeeds before it would expire). Long work should stop there: its result will
   * not be the key's answer. Undefined outside a leading run (e.g. when a caller only waited).
   */
  static currentSignal(): AbortSignal | undefined {
    return currentLeaderSignal();
  }

  get storeKind(): IdempotencyStore['kind'] {
    return this.store.kind;
  }

  async singleflight<T>(
    key: string,
    worker: (context: WorkerContext) => Promise<T>,
    config: IdempotencyConfig,
  ): Promise<SingleflightOutcome<T>> {
    const settings = this.resolve(key, config);
    const { scope } = settings;
    const started = performance.now();
    // Subscribe before the first look at the record, so a completion in between is not missed.
    const wake = await this.follow(key);
    let waited = false;
    try {
      for (;;) {
        const owner = `${process.pid}-${randomBytes(8).toString('hex')}`;
        const sentAt = performance.now();
        const begun = await beginOrClear(
          this.store,
          key,
          { status: 'in_progress', scope, owner, started_at: Date.now() },
          settings.leaseMs,
          // Force bypasses a cached result, but a run already in flight is joined, not doubled.
          settings.force && !waited,
        );
        if (begun.leader) {
          this.metrics.count(scope, waited ? 'takeover' : 'miss');
          return await this.lead(key, owner, sentAt, worker, settings);
        }
        const { record } = begun;
        if (record.scope !== scope) {
          throw new IdempotencyUsageError(
            `idempotency key ${key} belongs to scope ${record.scope}, not ${scope}`,
          );
        }
        if (record.status === 'done') {
          this.metrics.count(scope, waited ? 'wait' : 'hit');
          if (waited) this.observeWait(scope, started);
          return { status: 'done', result: JSON.parse(record.result) as T, replayed: true };
        }
        waited = true;
        const left = started + settings.waitTimeoutMs - performance.now();
        if (left <= 0) {
          this.metrics.count(scope, 'timeout');
          this.observeWait(scope, started);
          return { status: 'timeout', waitedMs: Math.round(performance.now() - started) };
        }
        await wake.sleep(Math.min(settings.pollIntervalMs, left));
      }
    } finally {
      wake.dispose();
    }
  }

  /** The stored record (operators, HTTP replays); null when none. */
  peek(key: string) {
    return this.store.get(key);
  }

  /**
   * Deletes the in-progress record of `owner`'s run, known (by the caller) to be dead, so the
   * next caller leads at once instead of waiting out its lease. Owner-checked: a newer run's
   * record is left alone. Followers waiting on the key are woken.
   */
  abandon(key: string, owner: string): Promise<boolean> {
    return this.store.abandon(key, owner);
  }

  /**
   * Deletes a completed result that no longer holds (what it described was dropped), so the
   * next call runs instead of replaying it. A run in progress is left alone.
   */
  forgetResult(key: string): Promise<boolean> {
    return this.store.forgetResult(key);
  }

  /** After the HTTP server has drained: requests still in flight keep their records working. */
  async onApplicationShutdown(): Promise<void> {
    (await this.unsubscribe)?.();
    await this.store.close();
  }

  private async lead<T>(
    key: string,
    owner: string,
    leaseStartedAt: number,
    worker: (context: WorkerContext) => Promise<T>,
    settings: Resolved,
  ): Promise<SingleflightOutcome<T>> {
    const { scope } = settings;
    const lease = new IdempotencyLease(
      this.store,
      key,
      owner,
      settings.leaseMs,
      leaseStartedAt,
      this.logger,
    );
    try {
      let result: T;
      let encoded: ReturnType<typeof encodeResult>;
      try {
        const { signal } = lease;
        result = await runAsLeader(key, signal, () => worker({ signal }));
        // Serialised while the lease is still renewed, and at most ~maxResultBytes of work.
        encoded = encodeResult(key, result, this.maxResultBytes);
      } catch (error) {
        lease.end();
        this.metrics.count(scope, 'worker_error');
        // Nothing cached, nothing stuck: the next caller runs the worker again.
        await this.store.abandon(key, owner).catch((abandonError: unknown) => {
          this.logger.warn(`could not clear ${key} after a failed worker: ${String(abandonError)}`);
        });
        if (lease.lost) return await this.outcomeOfLostRun(key, scope, 'its worker failed', error);
        throw error;
      }
      lease.writing();
      if (!encoded.stored) {
        this.metrics.count(scope, 'not_stored');
        const released = await this.store.abandon(key, owner).catch((error: unknown) => {
          // Unknown whether it still led; the record expires with the lease either way.
          this.logger.warn(`could not release ${key}: ${String(error)}`);
          return true;
        });
        if (!released) {
          // Not to be stored anyway: still its caller's answer unless another run took over.
          return await this.outcomeOfLostRun(key, scope, 'its result was too large', undefined, {
            result,
          });
        }
        this.logger.warn(
          `${key}: result not stored: ${encoded.bytes} bytes or more, over maxResultBytes ` +
            `(${this.maxResultBytes}); the key is released, so the next caller runs it again`,
        );
        return { status: 'done', result, replayed: false };
      }
      const stored = await this.store.complete(
        key,
        owner,
        {
          status: 'done',
          scope,
          owner,
          started_at: Date.now(),
          completed_at: Date.now(),
          result: encoded.json,
        },
        settings.ttlMs,
      );
      if (!stored) {
        this.metrics.count(scope, 'stale_completion');
        return await this.outcomeOfLostRun(key, scope, 'its result was refused');
      }
      // Every caller sees the same JSON value, the leader included.
      return { status: 'done', result: JSON.parse(encoded.json) as T, replayed: false };
    } finally {
      lease.end();
    }
  }

  /**
   * The answer for the caller of a run that lost its lease: the key's stored result (another
   * caller took over and finished), else an error saying why there is none. A result that would
   * not have been stored anyway (`unclaimed`) is still returned when nobody took the key over.
   */
  private async outcomeOfLostRun<T>(
    key: string,
    scope: string,
    what: string,
    cause?: unknown,
    unclaimed?: { result: T },
  ): Promise<SingleflightOutcome<T>> {
    const current = await this.store.get(key);
    if (current === null && unclaimed) return { status: 'done', ...unclaimed, replayed: false };
    if (current?.status === 'done' && current.scope === scope) {
      this.logger.warn(
        `${key}: this run lost its lease; ${what}, not stored; its caller gets the stored result of the run that took over`,
      );
      return { status: 'done', result: JSON.parse(current.result) as T, replayed: true };
    }
    const state =
      current?.status === 'in_progress'
        ? 'taken over by another caller, which is still running'
        : 'nothing is stored for the key, so a retry runs it again';
    this.logger.warn(`${key}: this run lost its lease; ${what}, not stored; ${state}`);
    throw new IdempotencyLeaseLostError(key, state, { cause });
  }

  private async follow(key: string): Promise<Wakeable> {
    this.unsubscribe ??= this.store.onSettled((settledKey) => this.wakeups.notify(settledKey));
    await this.unsubscribe;
    return this.wakeups.waiter([key]);
  }

  private observeWait(scope: string, started: number): void {
    this.metrics.followerWaitSeconds.observe({ scope }, (performance.now() - started) / 1000);
  }

  private resolve(key: string, config: IdempotencyConfig): Resolved {
    if (
      typeof key !== 'string' ||
      !key.startsWith(this.prefix) ||
      !KEY_BODY.test(key.slice(this.prefix.length))
    ) {
      throw new IdempotencyUsageError(
        `idempotency key must start with "${this.prefix}" and hold only safe characters`,
      );
    }
    const merged = { ...this.defaults, ...definedOnly(config) };
    const positive = (name: keyof typeof SEED_DEFAULTS, value: number) => {
      if (!(Number.isFinite(value) && value > 0)) {
        throw new IdempotencyUsageError(`${name} must be a positive number`);
      }
      return value;
    };
    if (!config.scope) throw new IdempotencyUsageError('scope is required');
    return {
      scope: config.scope,
      ttlMs: positive('ttl_seconds', merged.ttl_seconds) * 1000,
      leaseMs: positive('in_progress_ttl', merged.in_progress_ttl) * 1000,
      waitTimeoutMs: Math.max(0, merged.wait_timeout_ms),
      pollIntervalMs: positive('poll_interval_ms', merged.poll_interval_ms),
      force: config.force === true,
    };
  }
}
