import { IdempotencyResultError } from './idempotency.errors';

export type EncodedResult =
  | { stored: true; json: string; bytes: number }
  /** Larger than the cap: `bytes` is its size, or a lower bound when the walk stopped early. */
  | { stored: false; bytes: number };

/**
 * A worker's result as the JSON to store, or word that it is larger than `maxBytes`. Results are
 * cached as JSON, so anything else (Dates, Maps, class instances, NaN) is refused. The check
 * walks the value keeping a lower bound of its JSON size and stops once that passes the cap, so
 * an oversized result costs about `maxBytes` of work, not a full serialisation (which would block
 * the event loop, and with it the lease renewals, for as long as the result is large).
 */
export function encodeResult(key: string, value: unknown, maxBytes: number): EncodedResult {
  // A worker with nothing to return still completes: its result is null.
  if (value === undefined) return { stored: true, json: 'null', bytes: 4 };
  const walk = { bytes: 0, maxBytes };
  const problem = inspect(value, 'result', 0, walk);
  if (problem) {
    throw new IdempotencyResultError(`result of ${key} is not JSON-serialisable: ${problem}`);
  }
  if (walk.bytes > maxBytes) return { stored: false, bytes: walk.bytes };
  const json = JSON.stringify(value);
  const bytes = Buffer.byteLength(json);
  return bytes > maxBytes ? { stored: false, bytes } : { stored: true, json, bytes };
}

interface Walk {
  /** A lower bound of the JSON bytes seen so far. */
  bytes: number;
  readonly maxBytes: number;
}

/** The first non-JSON part of `value`, if any; stops early (no problem) once over the cap. */
function inspect(value: unknown, path: string, depth: number, walk: Walk): string | undefined {
  if (walk.bytes > walk.maxBytes) return undefined;
  if (depth > 64) return `${path} is nested too deeply`;
  if (value === null || typeof value === 'boolean') {
    walk.bytes += 4;
    return undefined;
  }
  if (typeof value === 'string') {
    // At least one byte per UTF-16 unit, plus the quotes.
    walk.bytes += value.length + 2;
    return undefined;
  }
  if (typeof value === 'number') {
    walk.bytes += 1;
    return Number.isFinite(value) ? undefined : `${path} is ${value}`;
  }
  if (Array.isArray(value)) {
    walk.bytes += 1 + Math.max(1, value.length);
    for (let i = 0; i < value.length && walk.bytes <= walk.maxBytes; i++) {
      const found = inspect(value[i], `${path}[${i}]`, depth + 1, walk);
      if (found) return found;
    }
    return undefined;
  }
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      return `${path} is a ${value.constructor?.name ?? 'non-plain object'}`;
    }
    walk.bytes += 2;
    // for…in rather than Object.entries: no copy of a huge object's entries before the cap stops us.
    for (const name in value) {
      if (walk.bytes > walk.maxBytes) return undefined;
      if (!Object.hasOwn(value, name)) continue;
      const child = (value as Record<string, unknown>)[name];
      if (child === undefined) continue;
      walk.bytes += name.length + 4;
      const found = inspect(child, `${path}.${name}`, depth + 1, walk);
      if (found) return found;
    }
    return undefined;
  }
  return `${path} is a ${typeof value}`;
}
