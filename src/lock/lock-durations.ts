/**
 * The longest lease a handle can watch: Node's timers hold at most 2^31-1 ms (about 24.8 days);
 * a longer delay fires after 1 ms, which turned a renewing lease into a busy loop.
 */
export const MAX_TTL_MS = 2 ** 31 - 1;

/**
 * Lease lengths are whole milliseconds on every backend: Redis refuses fractions (`PX 1.5`),
 * so a fraction that the memory backend took would fail only in production.
 */
export function assertTtlMs(ttlMs: number): void {
  if (!(Number.isInteger(ttlMs) && ttlMs > 0 && ttlMs <= MAX_TTL_MS)) {
    throw new RangeError(
      `ttlMs must be a whole number of milliseconds from 1 to ${MAX_TTL_MS}, got ${ttlMs}`,
    );
  }
}

export function assertWaitTimeoutMs(waitTimeoutMs: number): void {
  if (!(Number.isSafeInteger(waitTimeoutMs) && waitTimeoutMs >= 0)) {
    throw new RangeError(
      `waitTimeoutMs must be a whole number of milliseconds, 0 or more, got ${waitTimeoutMs}`,
    );
  }
}
