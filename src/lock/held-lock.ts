import { Logger } from '@nestjs/common';
import { LockBackend } from './lock-backend';
import { assertTtlMs } from './lock-durations';
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
 *
 * Renewals and extends are lease resets sent one at a time (see resetLease): each moves the
 * deadline by the TTL it carried, so a renewal cannot overwrite a longer extend behind the
 * handle's back, whatever the interleaving.
 */
export class HeldLock implements LockHandle, MultiLockHandle {
  // Created on first use: most holders never look at their signal.
  private controller?: AbortController;
  private lostReason?: LockLostError;
  private state: 'held' | 'lost' | 'released' = 'held';
  private deadline: number;
  private renewTimer?: NodeJS.Timeout;
  /** The watchdog renews the lease until the holder releases it. */
  private renews: boolean;
  /** The lease reset in flight, if any: the next one waits for it to settle. */
  private resetting?: Promise<unknown>;
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
    this.renews = renew;
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

  async extend(ttlMs?: number): Promise<void> {
    if (ttlMs !== undefined) assertTtlMs(ttlMs);
    if (!this.checkExpiry()) throw new LockLostError(this.key, `already ${this.state}`);
    const extended = await this.resetLease(ttlMs);
    if (this.state !== 'held')
      throw new LockLostError(this.key, `released or lost while extending`);
    if (!extended) throw new LockLostError(this.key, 'the lease had expired or was taken over');
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
    this.checkExpiry(now);
    // The holder is done with the lease: no more renewals, even if the release below fails
    // (the lease then runs out by itself, and the expiry guard still aborts in time).
    this.renews = false;
    if (this.renewTimer) {
      clearTimeout(this.renewTimer);
      this.renewTimer = undefined;
    }
    // Compare-and-delete: a no-op if the lease already passed to someone else. A backend error
    // leaves the handle as it was, so the release can be tried again.
    const removed = await this.backend.release(this.keys as string[], this.token);
    this.markReleased(now);
    return removed > 0;
  }

  /** When the lease runs out by itself (performance.now() time), unless renewed. */
  get expiresAt(): number {
    return this.deadline;
  }

  /** True while held; marks the lease lost once its local deadline (less a margin) has passed. */
  checkExpiry(now = performance.now()): boolean {
    if (this.state !== 'held') return false;
    if (now < this.deadline - this.margin()) return true;
    this.lose('the lease could not be renewed before it expired');
    return false;
  }

  private scheduleRenewal(delayMs: number): void {
    clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => void this.renew(), delayMs);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    this.renewTimer = undefined;
    try {
      // A successful reset schedules the next renewal.
      await this.resetLease(undefined);
    } catch (error) {
      // Released while the renewal was in flight: its answer no longer matters.
      if (this.state !== 'held' || !this.renews) return;
      this.hooks.renewalFailed(this, error);
      // Try again soon; the expiry guard aborts the holder if no attempt succeeds in time.
      const left = this.deadline - this.margin() - performance.now();
      this.scheduleRenewal(Math.max(10, Math.min(this.ttlMs / 3, left / 2)));
    }
  }

  /**
   * Resets the lease to `ttlMs` (undefined: the current TTL, read when the reset is sent).
   * One reset at a time, each waiting for the previous one to settle: then the reply received
   * last is that of the command the server ran last, and the deadline can be computed from the
   * TTL that this very command carried. Overlapping, a renewal sent with the old TTL after a
   * longer extend() left Redis with the short lease while the handle counted on the long one.
   * Resolves to false when the lease was no longer ours (the handle is then lost).
   */
  private resetLease(ttlMs: number | undefined): Promise<boolean> {
    const send = () => this.sendReset(ttlMs);
    const reset = this.resetting ? this.resetting.then(send, send) : send();
    const settled = reset.then(
      () => undefined,
      () => undefined,
    );
    this.resetting = settled;
    void settled.then(() => {
      if (this.resetting === settled) this.resetting = undefined;
    });
    return reset;
  }

  private async sendReset(requestedTtlMs: number | undefined): Promise<boolean> {
    if (this.state !== 'held') return false;
    const ttlMs = requestedTtlMs ?? this.ttlMs;
    const sentAt = performance.now();
    let extended: boolean;
    try {
      extended = await this.backend.extend(this.keys as string[], this.token, ttlMs);
    } catch (error) {
      // The command may or may not have run: the lease ends at the earlier of the two ends.
      if (sentAt + ttlMs < this.deadline) {
        this.deadline = sentAt + ttlMs;
        if (this.expiryTimer) this.armExpiryGuard();
      }
      throw error;
    }
    if (this.state !== 'held') return false;
    if (!extended) {
      this.lose('the lease had expired or was taken over');
      return false;
    }
    this.ttlMs = ttlMs;
    // From before the request left: never later than the server's own expiry.
    this.deadline = sentAt + ttlMs;
    if (this.renews) {
      this.armExpiryGuard();
      this.scheduleRenewal(ttlMs / 3);
    } else if (this.expiryTimer) {
      this.armExpiryGuard();
    }
    return true;
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

  /** After the backend confirmed a release (by this call or a concurrent one). */
  private markReleased(now: number): void {
    if (this.state === 'released') return;
    const wasHeld = this.state === 'held';
    this.state = 'released';
    if (this.expiryTimer) this.stopTimers();
    if (wasHeld) this.hooks.settled(this, false, now);
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
