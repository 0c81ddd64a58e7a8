/**
 * A stored HTTP response sent again for a repeated Idempotency-Key (thrown to the exception
 * filter, which sends it as is, with `Idempotent-Replayed: true`).
 */
export class ReplayedResponse extends Error {
  override readonly name = 'ReplayedResponse';

  constructor(
    readonly statusCode: number,
    /** The body as sent the first time (a string or Buffer), or a value to serialise. */
    readonly body: unknown,
    /** The stored headers that matter: Content-Type, Location, Content-Location, Retry-After. */
    readonly headers: Readonly<Record<string, string>>,
  ) {
    super(`replayed ${statusCode} response`);
  }
}
