import { toProblem } from '../../src/common/problem-details.filter';
import {
  InvalidLockKeyError,
  LockBackendError,
  LockHolderChangedError,
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

  it('maps a force-release that found another holder to 409', () => {
    expect(toProblem(new LockHolderChangedError('lock:a', 3, 4)).status).toBe(409);
  });
});

describe('database errors as HTTP problems', () => {
  const pgError = (code: string, message = 'boom') => Object.assign(new Error(message), { code });

  it.each([
    [
      'a terminated backend',
      pgError('57P01', 'terminating connection due to administrator command'),
    ],
    ['a connection failure', pgError('08006')],
    ['too many connections', pgError('53300')],
    ['a refused connection', pgError('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.9:5432')],
    ['a connection that ended', new Error('Connection terminated unexpectedly')],
    ['a pool that could not connect', new Error('timeout exceeded when trying to connect')],
  ])('maps %s to 503 without leaking the cause', (_name, error) => {
    const { status, body, retryAfter } = toProblem(error);
    expect(status).toBe(503);
    expect(retryAfter).toBe('1');
    expect(JSON.stringify(body)).not.toContain('10.0.0.9');
  });

  it('maps a lock_timeout to 409, and other SQL errors stay unexpected', () => {
    expect(toProblem(pgError('55P03')).status).toBe(409);
    expect(toProblem(pgError('42601', 'syntax error')).status).toBe(500);
    expect(toProblem(pgError('23505', 'duplicate key')).status).toBe(500);
  });
});
