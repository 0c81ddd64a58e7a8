/**
 * Errors that mean Postgres could not be reached or dropped the connection, rather than that
 * the statement was wrong: the request may succeed when retried, so they answer 503.
 */
const UNAVAILABLE_SQLSTATE_CLASSES = ['08', '57P', '53'];
const UNAVAILABLE_NODE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT']);
const UNAVAILABLE_MESSAGES = [
  'Connection terminated',
  'timeout exceeded when trying to connect',
  'is not queryable',
  'Client was closed',
];

export function isDatabaseUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (UNAVAILABLE_NODE_CODES.has(code)) return true;
    // SQLSTATE 08xxx connection exception, 57P0x operator intervention (terminated backend,
    // shutdown), 53xxx insufficient resources (too many connections).
    if (code.length === 5 && UNAVAILABLE_SQLSTATE_CLASSES.some((c) => code.startsWith(c))) {
      return true;
    }
  }
  return UNAVAILABLE_MESSAGES.some((message) => error.message.includes(message));
}

/** SQLSTATE 55P03: a `lock_timeout` ran out (a table or row was busy). */
export function isLockTimeout(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '55P03';
}

/** SQLSTATE 42P01: the table does not exist (a slot dropped by cleanup meanwhile). */
export function isUndefinedTable(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '42P01';
}
