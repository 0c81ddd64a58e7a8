import { canonicalJson } from '../../src/idempotency/idempotency-key.interceptor';

describe('canonicalJson (Idempotency-Key payload fingerprint)', () => {
  it('ignores object key order at every depth but keeps array order', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, 1], c: null } })).toBe(
      canonicalJson({ a: { c: null, d: [2, 1] }, b: 1 }),
    );
    expect(canonicalJson({ a: [1, 2] })).not.toBe(canonicalJson({ a: [2, 1] }));
    expect(canonicalJson({ a: '1' })).not.toBe(canonicalJson({ a: 1 }));
    expect(canonicalJson(undefined)).toBe('');
  });
});
