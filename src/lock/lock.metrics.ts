import { Injectable, Optional } from '@nestjs/common';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

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
  readonly waitSeconds: Histogram<'operation'>;
  readonly holdSeconds: Histogram<'operation'>;
  private readonly heldAges = new Map<object, { operation: string; since: number }>();
  private readonly children = new Map<string, ReturnType<LockMetrics['labelled']>>();

  constructor(@Optional() registry: Registry = new Registry()) {
    const registers = [registry];
    const counter = (name: string, help: string) =>
      new Counter({ name, help, labelNames: ['operation'] as const, registers });
    this.attempts = counter('lock_acquire_attempts_total', 'Lock acquisitions started.');
    this.acquired = counter('lock_acquired_total', 'Locks acquired.');
    this.conflicts = counter(
      'lock_conflicts_total',
      'Acquire attempts that found the lock taken (each retry counts).',
    );
    this.timeouts = counter('lock_timeouts_total', 'Acquisitions that gave up after waiting.');
    this.errors = counter('lock_backend_errors_total', 'Lock operations failed by the backend.');
    this.lost = counter('lock_lost_total', 'Leases lost while held (expired, taken over).');
    this.forcedReleases = new Counter({
      name: 'lock_forced_releases_total',
      help: 'Locks removed by an administrator.',
      registers,
    });
    this.waitSeconds = new Histogram({
      name: 'lock_wait_seconds',
      help: 'Time from asking for a lock to holding it.',
      labelNames: ['operation'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    });
    this.holdSeconds = new Histogram({
      name: 'lock_hold_seconds',
      help: 'Time a lock was held.',
      labelNames: ['operation'] as const,
      buckets: [0.001, 0.01, 0.1, 1, 10, 60, 600],
      registers,
    });
    const ages = this.heldAges;
    new Gauge({
      name: 'lock_held_age_seconds',
      help: 'Locks this instance holds now, by operation: the age of the oldest.',
      labelNames: ['operation'] as const,
      registers,
      collect() {
        this.reset();
        const now = performance.now();
        const oldest = new Map<string, number>();
        for (const { operation, since } of ages.values()) {
          oldest.set(operation, Math.max(oldest.get(operation) ?? 0, (now - since) / 1000));
        }
        for (const [operation, age] of oldest) this.set({ operation }, age);
      },
    });
    new Gauge({
      name: 'lock_held',
      help: 'Locks this instance holds now.',
      registers,
      collect() {
        this.set(ages.size);
      },
    });
  }

  /** Label-bound children, cached per operation: the hot path skips label hashing. */
  of(operation: string) {
    let children = this.children.get(operation);
    if (!children) {
      children = this.labelled(operation);
      this.children.set(operation, children);
    }
    return children;
  }

  private labelled(operation: string) {
    const labels = { operation };
    return {
      attempts: this.attempts.labels(labels),
      acquired: this.acquired.labels(labels),
      conflicts: this.conflicts.labels(labels),
      timeouts: this.timeouts.labels(labels),
      errors: this.errors.labels(labels),
      lost: this.lost.labels(labels),
      waitSeconds: this.waitSeconds.labels(labels),
      holdSeconds: this.holdSeconds.labels(labels),
    };
  }

  holding(lock: object, operation: string): void {
    this.heldAges.set(lock, { operation, since: performance.now() });
  }

  released(lock: object): void {
    this.heldAges.delete(lock);
  }
}
