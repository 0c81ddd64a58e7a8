import { HolderEncoder, decodeLockValue, encodeLockValue } from '../../src/lock/lock-backend';
import { LockHolder } from '../../src/lock/lock.types';

describe('HolderEncoder', () => {
  const encoder = new HolderEncoder('host-1-"quoted"\\', 4242);

  it.each([undefined, 'rebuild', 'odd "name" \\ with ünïcode', ''])(
    'encodes exactly what JSON.stringify would (operation %p), on first and later use',
    (operation) => {
      for (const acquiredAt of [1_764_000_000_000, 0, 1_764_000_000_123]) {
        const holder: LockHolder = {
          instanceId: 'host-1-"quoted"\\',
          pid: 4242,
          operation,
          acquiredAt,
        };
        expect(encoder.encode(operation, acquiredAt)).toBe(JSON.stringify(holder));
      }
    },
  );

  it('round-trips through a lock value', () => {
    const value = encodeLockValue('tok.1', encoder.encode('op', 123));
    expect(decodeLockValue(value)).toEqual({
      instanceId: 'host-1-"quoted"\\',
      pid: 4242,
      operation: 'op',
      acquiredAt: 123,
    });
  });
});
