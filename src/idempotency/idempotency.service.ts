import { randomBytes } from 'node:crypto';
import { Inject, Injectable, Logger, OnModuleDestroy } from '@nestjs/common';
import { KeyedWakeups, Wakeable } from '../common/keyed-wakeups';
import { definedOnly } from '../common/objects';
import { startHeartbeat } from './heartbeat';
import { IdempotencyStore } from './idempotency-store';
import { IdempotencyResultError, IdempotencyUsageError } from './idempotency.errors';
import { IdempotencyMetrics } from './idempotency.metrics';
import {
  IDEMPOTENCY_MODULE_OPTIONS,
  IDEMPOTENCY_STORE,
  IdempotencyModuleOptions,
} from './idempotency.module-definition';
import { IdempotencyConfig, SingleflightOutcome, WorkerContext } from './idempotency.types';

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
 */
@Injectable()
export class IdempotencyService implements OnModuleDestroy {
  private readonly logger = new Logger('IdempotencyService');
  private readonly defaults: typeof SEED_DEFAULTS;
  private readonly prefix: string;
  private readonly wakeups = new KeyedWakeups();
  private unsubscribe?: Promise<() => void>;

  constructor(
    @Inject(IDEMPOTENCY_STORE) private readonly store: IdempotencyStore,
    @Inject(IDEMPOTENCY_MODULE_OPTIONS) options: IdempotencyModuleOptions,
    private readonly metrics: IdempotencyMetrics,
  ) {
    this.defaults = { ...SEED_DEFAULTS, ...definedOnly(options.defaults ?? {}) };
    this.prefix = options.prefix ?? 'idem:';
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
        const begun = await this.store.begin(
          key,
          { status: 'in_progress', scope, owner, started_at: Date.now() },
          settings.leaseMs,
          // Force bypasses a cached result, but a run already in flight is joined, not doubled.
          settings.force && !waited,
        );
        if (begun.leader) {
          this.metrics.count(scope, waited ? 'takeover' : 'miss');
          const result = await this.lead(key, owner, worker, settings);
          return { status: 'done', result, replayed: false };
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

  async onModuleDestroy(): Promise<void> {
    (await this.unsubscribe)?.();
    await this.store.close();
  }

  private async lead<T>(
    key: string,
    owner: string,
    worker: (context: WorkerContext) => Promise<T>,
    settings: Resolved,
  ): Promise<T> {
    const controller = new AbortController();
    const heartbeat = startHeartbeat(
      this.store,
      key,
      owner,
      settings.leaseMs,
      controller,
      this.logger,
    );
    let json: string;
    try {
      json = toJson(key, await worker({ signal: controller.signal }));
    } catch (error) {
      heartbeat.stop();
      this.metrics.count(settings.scope, 'worker_error');
      // Nothing cached, nothing stuck: the next caller runs the worker again.
      await this.store.abandon(key, owner).catch((abandonError: unknown) => {
        this.logger.warn(`could not clear ${key} after a failed worker: ${String(abandonError)}`);
      });
      throw error;
    }
    heartbeat.stop();
    const stored = await this.store.complete(
      key,
      owner,
      {
        status: 'done',
        scope: settings.scope,
        owner,
        started_at: Date.now(),
        completed_at: Date.now(),
        result: json,
      },
      settings.ttlMs,
    );
    if (!stored) {
      this.metrics.count(settings.scope, 'stale_completion');
      this.logger.warn(`${key}: finished after losing leadership; the newer record is kept`);
    }
    // Every caller sees the same JSON value, the leader included.
    return JSON.parse(json) as T;
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

/** Results are cached as JSON: anything else (Dates, Maps, class instances, NaN) is refused. */
function toJson(key: string, value: unknown): string {
  // A worker with nothing to return still completes: its result is null.
  if (value === undefined) return 'null';
  const problem = findNonJson(value, 'result');
  if (problem) {
    throw new IdempotencyResultError(`result of ${key} is not JSON-serialisable: ${problem}`);
  }
  return JSON.stringify(value);
}

function findNonJson(value: unknown, path: string, depth = 0): string | undefined {
  if (depth > 64) return `${path} is nested too deeply`;
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return undefined;
  if (typeof value === 'number') return Number.isFinite(value) ? undefined : `${path} is ${value}`;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findNonJson(value[i], `${path}[${i}]`, depth + 1);
      if (found) return found;
    }
    return undefined;
  }
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      return `${path} is a ${value.constructor?.name ?? 'non-plain object'}`;
    }
    for (const [name, child] of Object.entries(value)) {
      if (child === undefined) continue;
      const found = findNonJson(child, `${path}.${name}`, depth + 1);
      if (found) return found;
    }
    return undefined;
  }
  return `${path} is a ${typeof value}`;
}
