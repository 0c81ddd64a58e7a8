import { toProblem } from '../../src/common/problem-details.filter';
import {
  InvalidLockKeyError,
  LockBackendError,
  LockLostError,
  LockNotAcquiredError,
  StaleFenceError,
} from '../../src/lock';

describe('lock errors as HTTP problems', () => {
  it('maps contention to 409 with Retry-After from the holder TTL', () => {
    const { status, body, retryAfter } = toProblem(new LockNotAcquiredError('lock:a', 100, 2_500));
    expect(status).toBe(409);
    expect(retryAfter).toBe('3');
    expect(body).toMatchObject({ status: 409, title: 'Conflict' });
  });

  it('maps an unreachable backend to 503 without leaking the cause', () => {
    const { status, body, retryAfter } = toProblem(
      new LockBackendError('lock:a', new Error('connect ECONNREFUSED 10.0.0.7:6379')),
    );
    expect(status).toBe(503);
    expect(retryAfter).toBe('1');
    expect(JSON.stringify(body)).not.toContain('10.0.0.7');
  });

  it('maps lost leases and stale fences to 409 and bad keys to 400', () => {
    expect(toProblem(new LockLostError('lock:a', 'expired')).status).toBe(409);
    expect(toProblem(new StaleFenceError('lock:a', 3)).status).toBe(409);
    expect(toProblem(new InvalidLockKeyError('bad key')).status).toBe(400);
  });
});
