/** mulberry32: a seeded 32-bit generator, so every run benches the same data. */
export function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * Clustered unit vectors: 100 centres, points scattered around them (what HNSW meets in real
 * embeddings, unlike uniform noise). `precision` rounds each component (7 = what float4 keeps).
 */
export function clustered(
  count: number,
  seed: number,
  dimension: number,
  precision?: number,
): number[][] {
  const random = seeded(seed);
  const gaussian = () =>
    Math.sqrt(-2 * Math.log(random() + 1e-12)) * Math.cos(2 * Math.PI * random());
  const centres = Array.from({ length: 100 }, () => Array.from({ length: dimension }, gaussian));
  return Array.from({ length: count }, () => {
    const centre = centres[Math.floor(random() * centres.length)];
    const v = centre.map((x) => x + 0.6 * gaussian());
    const norm = Math.hypot(...v);
    return v.map((x) => (precision ? Number((x / norm).toPrecision(precision)) : x / norm));
  });
}
