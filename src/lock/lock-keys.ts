/**
 * Lock key rules. Keys live under a configured prefix; the characters allowed exclude `#`, which
 * separates a lock key from its sibling keys (fence, queue), so no lock name can collide with
 * another lock's sibling.
 */
const LOCK_KEY_CHARS = '[A-Za-z0-9_:.\\-@/=+]';
// At most one non-empty Redis Cluster hash tag, e.g. `lock:{tenant-1}:rebuild`.
const LOCK_KEY_BODY = new RegExp(
  `^${LOCK_KEY_CHARS}*(\\{${LOCK_KEY_CHARS}+\\}${LOCK_KEY_CHARS}*)?$`,
);
const MAX_LOCK_KEY_LENGTH = 400;

export class InvalidLockKeyError extends Error {
  override readonly name = 'InvalidLockKeyError';
}

export function assertLockKey(key: string, prefix: string): void {
  if (typeof key !== 'string' || !key.startsWith(prefix)) {
    throw new InvalidLockKeyError(`lock key must start with "${prefix}"`);
  }
  const body = key.slice(prefix.length);
  if (body.length === 0 || key.length > MAX_LOCK_KEY_LENGTH || !LOCK_KEY_BODY.test(body)) {
    throw new InvalidLockKeyError(
      `lock key may hold only letters, digits, _ : . - @ / = + and one {hash tag} after the prefix, at most ${MAX_LOCK_KEY_LENGTH} characters`,
    );
  }
}

export function isLockKey(key: string, prefix: string): boolean {
  try {
    assertLockKey(key, prefix);
    return true;
  } catch {
    return false;
  }
}

/**
 * A key stored beside `key` in the same Redis Cluster slot. A key without a hash tag is wrapped
 * in one (`{key}#fence` hashes like `key`); a valid key with a tag keeps it as its only tag.
 */
export function siblingKey(key: string, suffix: string): string {
  return key.includes('{') ? `${key}#${suffix}` : `{${key}}#${suffix}`;
}
