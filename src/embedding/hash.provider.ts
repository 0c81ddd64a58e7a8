import { createHash } from 'node:crypto';
import { EmbeddingProvider } from './embedding.types';

/**
 * Deterministic local embeddings from feature hashing of word unigrams and character trigrams:
 * texts that share words land near each other, no model download, no network. Good for tests,
 * development and offline deployments; not a semantic model.
 */
export class HashEmbeddingProvider implements EmbeddingProvider {
  readonly model: string;

  constructor(readonly dimension: number) {
    this.model = `hash-v1-${dimension}`;
  }

  embed(texts: string[]): Promise<number[][]> {
    return Promise.resolve(texts.map((text) => this.embedOne(text)));
  }

  private embedOne(text: string): number[] {
    const vector = new Float64Array(this.dimension);
    const normalised = text.toLowerCase().normalize('NFKC');
    const words = normalised.split(/[^\p{L}\p{N}]+/u).filter(Boolean);
    const features = [...words];
    for (const word of words) {
      const padded = ` ${word} `;
      for (let i = 0; i + 3 <= padded.length; i++) features.push(`#${padded.slice(i, i + 3)}`);
    }
    // Empty or symbol-only text still gets a (non-zero) vector of its own.
    if (features.length === 0) features.push(`raw:${normalised}`);
    for (const feature of features) {
      const digest = createHash('sha256').update(feature).digest();
      const index = digest.readUInt32LE(0) % this.dimension;
      const sign = digest[4] & 1 ? 1 : -1;
      vector[index] += sign * (feature.startsWith('#') ? 0.5 : 1);
    }
    let norm = Math.hypot(...vector);
    if (norm === 0) {
      vector[0] = 1;
      norm = 1;
    }
    return Array.from(vector, (value) => value / norm);
  }
}
