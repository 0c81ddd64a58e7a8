import { Logger } from '@nestjs/common';
import { LockBackend } from './lock-backend';
import { LockLostError } from './lock.errors';
import { LockHandle, MultiLockHandle } from './lock.types';

export interface HeldLockHooks {
  /** Called once when the handle stops being held: released (lost=false) or lost (lost=true). */
  settled(lock: HeldLock, lost: boolean): void;
  renewalFailed(lock: HeldLock, error: unknown): void;
}

/**
 * A held lease on one or more keys. Tracks its deadline locally (measured from before the
 * acquire request was sent, so it is never later than the server's), renews it every ttl/3 when
 * asked to, and aborts `signal` a margin before the deadline if no renewal has succeeded.
 */
export class HeldLock implements LockHandle, MultiLockHandle {
  readonly fences: Readonly<Record<string, number>>;
  readonly acquiredAt = performance.now();
  // Created on first use: most holders never look at their signal.
  private controller?: AbortController;
  private lostReason?: LockLostError;
  private state: 'held' | 'lost' | 'released' = 'held';
  private deadline: number;
  private renewTimer?: NodeJS.Timeout;
  private expiryTimer?: NodeJS.Timeout;

  constructor(
    private readonly backend: LockBackend,
    private readonly hooks: HeldLockHooks,
    private readonly logger: Logger,
    readonly keys: readonly string[],
    readonly token: string,
    fences: number[],
    private ttlMs: number,
    leaseStartedAt: number,
    renew: boolean,
  ) {
    this.fences = Object.fromEntries(keys.map((key, i) => [key, fences[i]]));
    this.deadline = leaseStartedAt + ttlMs;
    this.armExpiryGuard();
    if (renew) this.scheduleRenewal(ttlMs / 3);
  }

  get key(): string {
    return this.keys[0];
  }

  get fence(): number {
    return this.fences[this.keys[0]];
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.lostReason) this.controller.abort(this.lostReason);
    }
    return this.controller.signal;
  }

  get held(): boolean {
    return this.state === 'held';
  }

  async extend(ttlMs = this.ttlMs): Promise<void> {
    if (this.state !== 'held') throw new LockLostError(this.key, `already ${this.state}`);
    const sentAt = performance.now();
    const extended = await this.backend.extend(this.keys as string[], this.token, ttlMs);
    if (!this.held) throw new LockLostError(this.key, 'released or lost while extending');
    if (!extended) {
      this.lose('the lease had expired or was taken over');
      throw new LockLostError(this.key, 'the lease had expired or was taken over');
    }
    this.ttlMs = ttlMs;
    this.deadline = sentAt + ttlMs;
    this.armExpiryGuard();
  }

  async release(): Promise<boolean> {
    if (this.state === 'released') return false;
    const wasHeld = this.state === 'held';
    this.state = 'released';
    this.stopTimers();
    if (wasHeld) this.hooks.settled(this, false);
    // Compare-and-delete: a no-op if the lease already passed to someone else.
    return (await this.backend.release(this.keys as string[], this.token)) > 0;
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
    const delay = Math.max(0, this.deadline - this.margin() - performance.now());
    this.expiryTimer = setTimeout(
      () => this.lose('the lease could not be renewed before it expired'),
      delay,
    );
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
    this.hooks.settled(this, true);
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
