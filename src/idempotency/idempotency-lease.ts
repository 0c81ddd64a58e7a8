import { Logger } from '@nestjs/common';
import { IdempotencyStore } from './idempotency-store';
import { IdempotencyLeaseLostError } from './idempotency.errors';

/**
 * A leader's hold on its in-progress record. Renews the record every lease/3 until the outcome
 * is written (not merely until the work returns), and tracks locally when the lease runs out,
 * measured from before the request that last renewed it was sent, so never later than Redis's
 * own expiry. `signal` aborts when a renewal finds the record taken over or gone, or a margin
 * before that local deadline when no renewal has succeeded in time (Redis unreachable, this
 * process paused): from then on another caller may take the key over.
 */
export class IdempotencyLease {
  private readonly controller = new AbortController();
  private state: 'running' | 'writing' | 'ended' | 'lost' = 'running';
  private deadline: number;
  private renewTimer?: NodeJS.Timeout;
  private expiryTimer?: NodeJS.Timeout;

  constructor(
    private readonly store: IdempotencyStore,
    readonly key: string,
    private readonly owner: string,
    private readonly leaseMs: number,
    /** performance.now() from before the request that wrote the record was sent. */
    startedAt: number,
    private readonly logger: Logger,
  ) {
    this.deadline = startedAt + leaseMs;
    this.armExpiryGuard();
    this.scheduleRenewal(leaseMs / 3);
  }

  /** Aborted (reason: IdempotencyLeaseLostError) once this run can no longer count on the key. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get lost(): boolean {
    return this.state === 'lost';
  }

  /**
   * The work is over and its outcome is being written: renewals go on until `end()`, but their
   * answers are no longer news (the write itself says whether this run still led).
   */
  writing(): void {
    if (this.state !== 'running') return;
    this.state = 'writing';
    clearTimeout(this.expiryTimer);
  }

  /** The outcome is written or the record released: stop renewing. */
  end(): void {
    if (this.state !== 'lost') this.state = 'ended';
    clearTimeout(this.renewTimer);
    clearTimeout(this.expiryTimer);
  }

  private scheduleRenewal(delayMs: number): void {
    this.renewTimer = setTimeout(() => void this.renew(), delayMs);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    const sentAt = performance.now();
    let alive: boolean;
    try {
      alive = await this.store.heartbeat(this.key, this.owner, this.leaseMs);
    } catch (error) {
      if (this.state !== 'running') return this.keepWriting();
      this.logger.warn(`${this.key}: renewal failed: ${String(error)}`);
      // Try again soon; the expiry guard aborts the run if no attempt succeeds in time.
      const left = this.deadline - this.margin() - performance.now();
      this.scheduleRenewal(Math.max(10, Math.min(this.leaseMs / 3, left / 2)));
      return;
    }
    if (this.state !== 'running') return this.keepWriting();
    if (!alive) {
      this.lose('its in-progress record was taken over or had expired');
      return;
    }
    this.deadline = sentAt + this.leaseMs;
    this.armExpiryGuard();
    this.scheduleRenewal(this.leaseMs / 3);
  }

  private keepWriting(): void {
    if (this.state === 'writing') this.scheduleRenewal(this.leaseMs / 3);
  }

  private armExpiryGuard(): void {
    clearTimeout(this.expiryTimer);
    // Whole milliseconds; a timer that fires a little early re-arms itself.
    const delay = Math.max(0, Math.ceil(this.deadline - this.margin() - performance.now()));
    this.expiryTimer = setTimeout(() => {
      if (this.state !== 'running') return;
      if (performance.now() < this.deadline - this.margin()) this.armExpiryGuard();
      else this.lose('it could not be renewed before it expired');
    }, delay);
    this.expiryTimer.unref();
  }

  /** Abort this long before the deadline: room for event-loop delay and clock drift. */
  private margin(): number {
    return Math.min(this.leaseMs / 10, 2_000);
  }

  private lose(reason: string): void {
    this.state = 'lost';
    clearTimeout(this.renewTimer);
    clearTimeout(this.expiryTimer);
    this.logger.warn(`${this.key}: lease lost: ${reason}`);
    this.controller.abort(new IdempotencyLeaseLostError(this.key, reason));
  }
}
