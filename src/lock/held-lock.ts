import { Logger } from '@nestjs/common';
import { LockBackend } from './lock-backend';
import { LockLostError } from './lock.errors';
import { LockHandle, MultiLockHandle } from './lock.types';

export interface HeldLockHooks {
  /**
   * Called once when the handle stops being held: released (lost=false) or lost (lost=true),
   * at `now` (performance.now()).
   */
  settled(lock: HeldLock, lost: boolean, now: number): void;
  renewalFailed(lock: HeldLock, error: unknown): void;
}

/**
 * A held lease on one or more keys. Tracks its deadline locally (measured from before the
 * acquire request was sent, so it is never later than the server's), renews it every ttl/3 when
 * asked to, and aborts `signal` a margin before the deadline if no renewal has succeeded.
 *
 * A handle nobody watches needs no timer: expiry is checked whenever the handle is used
 * (`held`, `extend`, `release`) and by the owner's periodic sweep. The expiry timer is armed
 * only for renewed leases and once someone asks for `signal`, since only then can an abort
 * at the exact moment be observed.
 */
export class HeldLock implements LockHandle, MultiLockHandle {
  // Created on first use: most holders never look at their signal.
  private controller?: AbortController;
  private lostReason?: LockLostError;
  private state: 'held' | 'lost' | 'released' = 'held';
  private deadline: number;
  private renewTimer?: NodeJS.Timeout;
  private expiryTimer?: NodeJS.Timeout;
  private fenceMap?: Readonly<Record<string, number>>;
  /** The first key's fence once raiseFence has moved it. */
  private raisedFence?: number;

  constructor(
    private readonly backend: LockBackend,
    private readonly hooks: HeldLockHooks,
    private readonly logger: Logger,
    readonly keys: readonly string[],
    readonly token: string,
    private readonly fenceValues: readonly number[],
    private ttlMs: number,
    leaseStartedAt: number,
    renew: boolean,
    /** The operation that took the lock, for metrics. */
    readonly operation: string,
    /** performance.now() when it was granted. */
    readonly acquiredAt: number,
  ) {
    this.deadline = leaseStartedAt + ttlMs;
    if (renew) {
      this.armExpiryGuard();
      this.scheduleRenewal(ttlMs / 3);
    }
  }

  get key(): string {
    return this.keys[0];
  }

  get fence(): number {
    return this.raisedFence ?? this.fenceValues[0];
  }

  get fences(): Readonly<Record<string, number>> {
    this.fenceMap ??= Object.fromEntries(this.keys.map((key, i) => [key, this.fenceValues[i]]));
    return this.fenceMap;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.checkExpiry()) {
        if (!this.expiryTimer) this.armExpiryGuard();
      } else if (this.lostReason) {
        this.controller.abort(this.lostReason);
      }
    }
    return this.controller.signal;
  }

  get held(): boolean {
    return this.checkExpiry();
  }

  async extend(ttlMs = this.ttlMs): Promise<void> {
    if (!this.checkExpiry()) throw new LockLostError(this.key, `already ${this.state}`);
    const sentAt = performance.now();
    const extended = await this.backend.extend(this.keys as string[], this.token, ttlMs);
    if (this.state !== 'held')
      throw new LockLostError(this.key, 'released or lost while extending');
    if (!extended) {
      this.lose('the lease had expired or was taken over');
      throw new LockLostError(this.key, 'the lease had expired or was taken over');
    }
    this.ttlMs = ttlMs;
    this.deadline = sentAt + ttlMs;
    if (this.expiryTimer) this.armExpiryGuard();
  }

  /** See LockHandle.raiseFence. Raises `key`'s fence: only single-key handles expose it. */
  async raiseFence(atLeast: number): Promise<number | null> {
    if (!this.checkExpiry()) return null;
    const fence = await this.backend.raiseFence(this.key, this.token, atLeast);
    if (this.state !== 'held') return null;
    if (fence === null) {
      this.lose('raising its fence found the lease expired or taken over');
      return null;
    }
    this.raisedFence = fence;
    this.fenceMap = { ...this.fences, [this.key]: fence };
    return fence;
  }

  async release(): Promise<boolean> {
    if (this.state === 'released') return false;
    // Held past its lease: counted as lost, but the compare-and-delete below still runs.
    const now = performance.now();
    const wasHeld = this.checkExpiry(now);
    this.state = 'released';
    if (this.renewTimer || this.expiryTimer) this.stopTimers();
    if (wasHeld) this.hooks.settled(this, false, now);
    // Compare-and-delete: a no-op if the lease already passed to someone else.
    return (await this.backend.release(this.keys as string[], this.token)) > 0;
  }

  /** True while held; marks the lease lost once its local deadline (less a margin) has passed. */
  checkExpiry(now = performance.now()): boolean {
    if (this.state !== 'held') return false;
    if (now < this.deadline - this.margin()) return true;
    this.lose('the lease could not be renewed before it expired');
    return false;
  }

  private scheduleRenewal(delayMs: number): void {
    this.renewTimer = setTimeout(() => void this.renew(), delayMs);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    const sentAt = performance.now();
    let extended: boolean;
    try {
      extended = await this.backend.extend(this.keys as string[], this.token, this.ttlMs);
    } catch (error) {
      if (this.state !== 'held') return;
      this.hooks.renewalFailed(this, error);
      // Try again soon; the expiry guard aborts the holder if no attempt succeeds in time.
      const left = this.deadline - this.margin() - performance.now();
      this.scheduleRenewal(Math.max(10, Math.min(this.ttlMs / 3, left / 2)));
      return;
    }
    // Released while the renewal was in flight: its answer no longer matters.
    if (this.state !== 'held') return;
    if (!extended) {
      this.lose('renewal found the lease expired or taken over');
      return;
    }
    this.deadline = sentAt + this.ttlMs;
    this.armExpiryGuard();
    this.scheduleRenewal(this.ttlMs / 3);
  }

  private armExpiryGuard(): void {
    clearTimeout(this.expiryTimer);
    // Whole milliseconds: Node keeps one timer list per distinct duration. A timer that fires
    // a little early re-arms itself.
    const delay = Math.max(0, Math.ceil(this.deadline - this.margin() - performance.now()));
    this.expiryTimer = setTimeout(() => {
      if (this.checkExpiry()) this.armExpiryGuard();
    }, delay);
    this.expiryTimer.unref();
  }

  /** Abort this long before the deadline: room for event-loop delay and clock drift. */
  private margin(): number {
    return Math.min(this.ttlMs / 10, 2_000);
  }

  private lose(reason: string): void {
    if (this.state !== 'held') return;
    this.state = 'lost';
    this.stopTimers();
    this.logger.warn(`lock ${this.keys.join(', ')} lost: ${reason}`);
    this.hooks.settled(this, true, performance.now());
    this.lostReason = new LockLostError(this.key, reason);
    this.controller?.abort(this.lostReason);
  }

  private stopTimers(): void {
    clearTimeout(this.renewTimer);
    clearTimeout(this.expiryTimer);
    this.renewTimer = undefined;
    this.expiryTimer = undefined;
  }
}
