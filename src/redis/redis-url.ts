import type { RedisOptions } from 'ioredis';

/** The part of the connection that a `redis://` or `rediss://` URL gives. */
export type RedisUrlOptions = Pick<
  RedisOptions,
  'host' | 'port' | 'username' | 'password' | 'db' | 'tls'
>;

/** Database numbers as REDIS_DB accepts them (a default Redis has databases 0-15). */
export const MAX_REDIS_DB = 15;

/** The URL's path without its slashes: '' or the database number. */
const databasePath = (url: URL) => url.pathname.replace(/^\/|\/$/g, '');

/**
 * Why a Redis URL cannot be used, or null when it can: `redis[s]://[[user]:password@]host[:port][/db]`
 * with db 0-15. The database comes only from the path (a query string is refused rather than
 * silently ignored), so an invalid value is caught by the configuration check instead of
 * failing the connection later with `SELECT NaN`.
 */
export function redisUrlProblem(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'must be a URL with scheme redis or rediss';
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    return 'must be a URL with scheme redis or rediss';
  }
  if (!url.hostname) return 'must name a host';
  if (url.search) return 'must not have a query string (set REDIS_DB for the database)';
  const path = databasePath(url);
  if (path !== '' && !(/^\d{1,2}$/.test(path) && Number(path) <= MAX_REDIS_DB)) {
    return `must have no path or a database number 0-${MAX_REDIS_DB} as its path (/0)`;
  }
  return null;
}

/**
 * ioredis options from a URL that passed redisUrlProblem. Built here rather than handing the URL
 * to ioredis, which lets the URL's database and password win over explicit options.
 */
export function redisUrlOptions(value: string): RedisUrlOptions {
  const url = new URL(value);
  const path = databasePath(url);
  return {
    // WHATWG URL keeps the brackets of an IPv6 host.
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : 6379,
    username: url.username ? decodeURIComponent(url.username) : undefined,
    password: url.password ? decodeURIComponent(url.password) : undefined,
    db: path === '' ? 0 : Number(path),
    tls: url.protocol === 'rediss:' ? {} : undefined,
  };
}
