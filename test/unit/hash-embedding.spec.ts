import { HashEmbeddingProvider } from '../../src/embedding/hash.provider';

const cosine = (a: number[], b: number[]) => a.reduce((sum, value, i) => sum + value * b[i], 0);

describe('HashEmbeddingProvider', () => {
  it('is deterministic across instances, unit-length, of the configured dimension', async () => {
    const [a] = await new HashEmbeddingProvider(64).embed(['What is 2+2?']);
    const [b] = await new HashEmbeddingProvider(64).embed(['What is 2+2?']);
    expect(a).toEqual(b);
    expect(a).toHaveLength(64);
    expect(Math.hypot(...a)).toBeCloseTo(1, 10);
    expect(new HashEmbeddingProvider(64).model).toBe('hash-v1-64');
  });

  it('never returns an all-zero vector', async () => {
    for (const vector of await new HashEmbeddingProvider(16).embed(['', '!!!', ' '])) {
      expect(vector.some((value) => value !== 0)).toBe(true);
    }
  });

  it('puts texts that share words closer than unrelated ones', async () => {
    const [question, similar, other] = await new HashEmbeddingProvider(384).embed([
      'how do I reset my password',
      'password reset instructions',
      'weather forecast for tomorrow',
    ]);
    expect(cosine(question, similar)).toBeGreaterThan(cosine(question, other) + 0.1);
  });
});
