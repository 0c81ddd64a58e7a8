import { testEnv } from '../support/env';
import { freePort } from '../support/ports';
import { ServiceProcess } from '../support/service-process';
import { waitFor } from '../support/wait';

/** The compiled service as operators run it: `node dist/main.js`. */
describe('service process', () => {
  const running: ServiceProcess[] = [];
  const start = (env: Record<string, string>) => {
    const service = ServiceProcess.start('main.js', env);
    running.push(service);
    return service;
  };
  afterAll(() => running.forEach((service) => service.kill()));

  it.each([
    [{ PORT: 'abc' }, /^Invalid configuration: PORT must be an? \w+/],
    [{ DATABASE_URL: '' }, /^Invalid configuration: DATABASE_URL is required$/],
    [
      { REDIS_URL: 'localhost:6379' },
      /^Invalid configuration: REDIS_URL must be a URL with scheme redis or rediss$/,
    ],
  ])('refuses to start with %j, naming the variable in one line', async (override, expected) => {
    const { code, stderr } = await start(testEnv(override)).exited;
    expect(code).toBe(1);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr.trim()).toMatch(expected);
  });

  it('logs JSON with request ids, then shuts down gracefully on SIGTERM', async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}/api/v1/vector`;
    const service = start(
      testEnv({
        PORT: String(port),
        LOG_LEVEL: 'info',
        SHUTDOWN_DELAY_MS: '3000',
        SHUTDOWN_GRACE_MS: '8000',
      }),
    );
    await waitFor(async () => (await fetch(`${base}/health/ready`)).ok, {
      what: 'the service to be ready',
    });

    const res = await fetch(`${base}/not-here`, { headers: { 'x-request-id': 'proc-test-1' } });
    expect(res.status).toBe(404);
    expect(res.headers.get('x-request-id')).toBe('proc-test-1');
    const lines = await waitFor(
      () => {
        const parsed = service.jsonLogLines();
        return parsed.some((line) => line.request_id === 'proc-test-1') && parsed;
      },
      { what: 'the request log line' },
    );
    expect(lines.find((line) => line.request_id === 'proc-test-1')).toMatchObject({
      level: 30,
      req: { method: 'GET', url: '/api/v1/vector/not-here' },
      res: { status: 404 },
    });

    service.kill('SIGTERM');
    // During the shutdown delay the instance still serves, but tells the balancer to go away.
    const draining = await waitFor(
      async () => {
        const ready = await fetch(`${base}/health/ready`);
        if (ready.status !== 503) return false;
        // A dependency check that timed out on a loaded machine also answers 503: wait for
        // the one that says the instance is shutting down.
        const body = (await ready.json()) as { details: { instance: { status: string } } };
        return body.details.instance.status === 'down' && body;
      },
      { what: 'readiness to fail while draining', timeoutMs: 2_800 },
    );
    expect(draining.details.instance).toMatchObject({ status: 'down', message: 'shutting down' });
    expect((await fetch(`${base}/health/live`)).status).toBe(200);

    // Natural exit (code 0) means Redis, Postgres and the server were all closed: a leftover
    // handle would keep the process alive until the grace timer forced exit code 1.
    const { code, signal } = await service.exited;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    const messages = service.jsonLogLines().map((line) => line.msg);
    expect(messages).toContain('shutdown complete');
    expect(service.stderr).toBe('');
  });
});
