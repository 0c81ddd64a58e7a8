import { createHash, timingSafeEqual } from 'node:crypto';

export type Scope = 'read' | 'write' | 'admin';

const RANK: Record<Scope, number> = { read: 1, write: 2, admin: 3 };

export interface ApiKey {
  /** Names the caller in logs and audit lines; the secret itself is never logged. */
  name: string;
  scope: Scope;
  digest: Buffer;
}

/** Who made a request, once authenticated. */
export interface Caller {
  keyName: string;
  scope: Scope;
}

export class ApiKeyConfigError extends Error {
  override readonly name = 'ApiKeyConfigError';
}

/** `name:scope:secret,…` — names unique, scopes read|write|admin, secrets of 16+ characters. */
export function parseApiKeys(raw: string | undefined): ApiKey[] {
  if (raw === undefined || raw.trim() === '') return [];
  const keys = raw.split(',').map((entry, i) => {
    const [name, scope, ...rest] = entry.trim().split(':');
    const secret = rest.join(':');
    if (!name || !/^[A-Za-z0-9_.-]{1,64}$/.test(name)) {
      throw new ApiKeyConfigError(`API_KEYS entry ${i + 1} needs a name of letters, digits, _ . -`);
    }
    if (!(scope in RANK)) {
      throw new ApiKeyConfigError(`API_KEYS entry ${name} must have scope read, write or admin`);
    }
    if (secret.length < 16) {
      throw new ApiKeyConfigError(
        `API_KEYS entry ${name} needs a secret of at least 16 characters`,
      );
    }
    return { name, scope: scope as Scope, digest: digest(secret) };
  });
  const names = new Set(keys.map((key) => key.name));
  if (names.size !== keys.length) throw new ApiKeyConfigError('API_KEYS names must be unique');
  return keys;
}

/**
 * The key matching `secret`, comparing digests in constant time against every key (no early
 * exit), so timing reveals neither which key nor how much of one matched.
 */
export function findKey(keys: readonly ApiKey[], secret: string): ApiKey | undefined {
  const candidate = digest(secret);
  let found: ApiKey | undefined;
  for (const key of keys) {
    if (timingSafeEqual(key.digest, candidate) && found === undefined) found = key;
  }
  return found;
}

export function allows(granted: Scope, required: Scope): boolean {
  return RANK[granted] >= RANK[required];
}

function digest(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}
