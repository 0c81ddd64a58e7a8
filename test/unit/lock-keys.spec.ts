import calculateSlot from 'cluster-key-slot';
import { assertLockKey, isLockKey, siblingKey } from '../../src/lock/lock-keys';

describe('lock keys', () => {
  it('accepts keys under the prefix with one optional hash tag', () => {
    for (const key of [
      'lock:a',
      'lock:vector:upsert:questions:math',
      'lock:{tenant-1}:rebuild',
      'lock:a.b/c=d+e@f',
    ]) {
      expect(isLockKey(key, 'lock:')).toBe(true);
    }
  });

  it('refuses other prefixes, sibling separators, globbing, whitespace and bad tags', () => {
    for (const key of [
      'idem:x',
      'lock:',
      'lock:x#fence',
      'lock:*',
      'lock:a b',
      'lock:{}',
      'lock:{a}{b}',
      'lock:{a',
      `lock:${'a'.repeat(400)}`,
    ]) {
      expect(() => assertLockKey(key, 'lock:')).toThrow();
    }
  });

  it('places sibling keys in the lock key slot, with or without a hash tag', () => {
    for (const key of ['lock:a', 'lock:vector:rebuild:math', 'lock:{tenant}:x']) {
      for (const suffix of ['fence', 'queue', 'seen', 'ticket']) {
        expect(calculateSlot(siblingKey(key, suffix))).toBe(calculateSlot(key));
      }
    }
    expect(siblingKey('lock:a', 'fence')).toBe('{lock:a}#fence');
  });
});
