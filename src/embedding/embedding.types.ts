/** Turns texts into vectors. One instance per configured model. */
export interface EmbeddingProvider {
  /** Recorded with every vector it makes: a model change means re-embedding. */
  readonly model: string;
  readonly dimension: number;
  /** One vector per text, in order. `signal` stops waiting (and retrying) at once. */
  embed(texts: string[], options?: EmbedOptions): Promise<number[][]>;
}

export interface EmbedOptions {
  signal?: AbortSignal;
}

/** The provider failed (unreachable, refused, malformed answer) after its retries. */
export class EmbeddingError extends Error {
  override readonly name = 'EmbeddingError';
}
