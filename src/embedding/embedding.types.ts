/** Turns texts into vectors. One instance per configured model. */
export interface EmbeddingProvider {
  /** Recorded with every vector it makes: a model change means re-embedding. */
  readonly model: string;
  readonly dimension: number;
  /** One vector per text, in order. */
  embed(texts: string[]): Promise<number[][]>;
}

/** The provider failed (unreachable, refused, malformed answer) after its retries. */
export class EmbeddingError extends Error {
  override readonly name = 'EmbeddingError';
}
