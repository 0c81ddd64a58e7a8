/** A stored HTTP response sent again for a repeated Idempotency-Key (thrown to the filter). */
export class ReplayedResponse extends Error {
  override readonly name = 'ReplayedResponse';

  constructor(
    readonly statusCode: number,
    readonly body: unknown,
    readonly contentType: string,
  ) {
    super(`replayed ${statusCode} response`);
  }
}
