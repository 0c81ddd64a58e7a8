import { Injectable, Optional } from '@nestjs/common';
import { Counter, Gauge, Registry } from 'prom-client';
import { HistogramTally, TalliedHistogram } from '../metrics/tallied-histogram';

/**
 * Counts for one operation. The hot path adds to plain numbers; the Prometheus counters read
 * them when scraped (prom-client hashes and validates labels on every `inc`, which would be a
 * sizeable share of an uncontended acquire + release).
 */
export class OperationTallies {
  attempts = 0;
  acquired = 0;
  conflicts = 0;
  timeouts = 0;
  errors = 0;
  lost = 0;

  constructor(
    readonly waitSeconds: HistogramTally,
    readonly holdSeconds: HistogramTally,
  ) {}
}

type TallyName = Exclude<keyof OperationTallies, 'waitSeconds' | 'holdSeconds'>;

/** What the held-locks gauges need to know of a held lock. */
export interface TrackedLock {
  readonly operation: string;
  /** performance.now() when it was taken. */
  readonly acquiredAt: number;
  /** False once released or past its lease. */
  readonly held: boolean;
}

/** Lock metrics, labelled by operation (never by key: keys are unbounded). */
@Injectable()
export class LockMetrics {
  readonly attempts: Counter<'operation'>;
  readonly acquired: Counter<'operation'>;
  readonly conflicts: Counter<'operation'>;
  readonly timeouts: Counter<'operation'>;
  readonly errors: Counter<'operation'>;
  readonly lost: Counter<'operation'>;
  readonly forcedReleases: Counter;
  private readonly waitSeconds: TalliedHistogram;
  private readonly holdSeconds: TalliedHistogram;
  private readonly tallies = new Map<string, OperationTallies>();
  private readonly heldSets = new Set<ReadonlySet<TrackedLock>>();

  constructor(@Optional() registry: Registry = new Registry()) {
    const registers = [registry];
    const tallies = this.tallies;
    const counter = (name: string, help: string, tally: TallyName) =>
      new Counter({
        name,
        help,
        labelNames: ['operation'] as const,
        registers,
        collect() {
          this.reset();
          for (const [operation, counts] of tallies) this.inc({ operation }, counts[tally]);
        },
      });
    this.attempts = counter(
      'lock_acquire_attempts_total',
      'Lock acquisitions started.',
      'attempts',
    );
    this.acquired = counter('lock_acquired_total', 'Locks acquired.', 'acquired');
    this.conflicts = counter(
      'lock_conflicts_total',
      'Acquire attempts that found the lock taken (each retry counts).',
      'conflicts',
    );
    this.timeouts = counter(
      'lock_timeouts_total',
      'Acquisitions that gave up after waiting.',
      'timeouts',
    );
    this.errors = counter(
      'lock_backend_errors_total',
      'Lock operations failed by the backend.',
      'errors',
    );
    this.lost = counter('lock_lost_total', 'Leases lost while held (expired, taken over).', 'lost');
    this.forcedReleases = new Counter({
      name: 'lock_forced_releases_total',
      help: 'Locks removed by an administrator.',
      registers,
    });
    this.waitSeconds = new TalliedHistogram({
      name: 'lock_wait_seconds',
      help: 'Time from asking for a lock to holding it.',
      labelName: 'operation',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    });
    this.holdSeconds = new TalliedHistogram({
      name: 'lock_hold_seconds',
      help: 'Time a lock was held.',
      labelName: 'operation',
      buckets: [0.001, 0.01, 0.1, 1, 10, 60, 600],
      registers,
    });
    const heldLocks = () => [...this.heldSets].flatMap((set) => [...set].filter((l) => l.held));
    new Gauge({
      name: 'lock_held_age_seconds',
      help: 'Locks this instance holds now, by operation: the age of the oldest.',
      labelNames: ['operation'] as const,
      registers,
      collect() {
        this.reset();
        const now = performance.now();
        const oldest = new Map<string, number>();
        for (const { operation, acquiredAt } of heldLocks()) {
          oldest.set(operation, Math.max(oldest.get(operation) ?? 0, (now - acquiredAt) / 1000));
        }
        for (const [operation, age] of oldest) this.set({ operation }, age);
      },
    });
    new Gauge({
      name: 'lock_held',
      help: 'Locks this instance holds now.',
      registers,
      collect() {
        this.set(heldLocks().length);
      },
    });
  }

  /** The tallies of one operation, created on first use. */
  of(operation: string): OperationTallies {
    let tallies = this.tallies.get(operation);
    if (!tallies) {
      tallies = new OperationTallies(
        this.waitSeconds.tally(operation),
        this.holdSeconds.tally(operation),
      );
      this.tallies.set(operation, tallies);
    }
    return tallies;
  }

  /** Reports the locks in `locks` (kept up to date by their owner) in the held-locks gauges. */
  track(locks: ReadonlySet<TrackedLock>): () => void {
    this.heldSets.add(locks);
    return () => this.heldSets.delete(locks);
  }
}
