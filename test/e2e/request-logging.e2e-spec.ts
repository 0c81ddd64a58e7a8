import { Controller, Get, InternalServerErrorException, Logger, Module } from '@nestjs/common';
import type { Logger as PinoLogger } from 'pino';
import { ROOT_LOGGER } from '../../src/logging/logging.module';
import { startTestApp, TestApp } from '../support/app';

/** Routes that log while they are handled, after an await as real handlers do. */
@Controller('log-probe')
class LogProbeController {
  private readonly logger = new Logger('LogProbe');

  @Get('quiet')
  quiet() {
    return { ok: true };
  }

  @Get('chatty')
  async chatty() {
    await new Promise((resolve) => setImmediate(resolve));
    this.logger.warn('inside the request');
    return { ok: true };
  }

  @Get('broken')
  broken() {
    throw new InternalServerErrorException('broken on purpose');
  }
}

@Module({ controllers: [LogProbeController] })
class LogProbeModule {}

describe('request logging', () => {
  let testApp: TestApp;
  let root: PinoLogger;
  let children: {
    bindings: Record<string, unknown>;
    warn: jest.SpyInstance;
    error: jest.SpyInstance;
  }[];

  beforeAll(async () => {
    testApp = await startTestApp({ LOG_LEVEL: 'info' }, [LogProbeModule]);
    root = testApp.app.get<PinoLogger>(ROOT_LOGGER);
  });
  afterAll(() => testApp.close());

  beforeEach(() => {
    children = [];
    const makeChild = root.child.bind(root);
    jest.spyOn(root, 'child').mockImplementation((bindings, options) => {
      const child = makeChild(bindings, options);
      children.push({
        bindings,
        warn: jest.spyOn(child, 'warn'),
        error: jest.spyOn(child, 'error'),
      });
      return child;
    });
    jest.spyOn(root, 'info');
    jest.spyOn(root, 'error');
  });
  afterEach(() => jest.restoreAllMocks());

  const accessLine = (spy: unknown, requestId: string): unknown[] | undefined =>
    (spy as jest.SpyInstance<unknown, unknown[]>).mock.calls.find(
      ([fields]) => (fields as { request_id?: string }).request_id === requestId,
    );

  it('writes one access line per request, with id, method, URL, status and time', async () => {
    const res = await testApp.http
      .get('/api/v1/vector/log-probe/quiet?x=1')
      .set('x-request-id', 'log-quiet-1');
    expect(res.status).toBe(200);
    const [fields, message] = accessLine(root.info, 'log-quiet-1')!;
    expect(fields).toMatchObject({
      request_id: 'log-quiet-1',
      req: { method: 'GET', url: '/api/v1/vector/log-probe/quiet?x=1' },
      res: { status: 200 },
    });
    expect(typeof (fields as { responseTime: unknown }).responseTime).toBe('number');
    expect(message).toBe('request completed');
    // Nothing was logged while handling it, so no request-bound logger was made.
    expect(children).toHaveLength(0);
  });

  it('binds the request id to lines logged while the request is handled', async () => {
    await testApp.http.get('/api/v1/vector/log-probe/chatty').set('x-request-id', 'log-chatty-1');
    const bound = children.filter((c) => c.bindings.request_id === 'log-chatty-1');
    expect(bound).toHaveLength(1);
    expect(bound[0].warn).toHaveBeenCalledWith(
      expect.objectContaining({ context: 'LogProbe' }),
      'inside the request',
    );
  });

  it('keeps concurrent requests apart', async () => {
    const ids = Array.from({ length: 20 }, (_, i) => `log-many-${i}`);
    await Promise.all(
      ids.map((id) => testApp.http.get('/api/v1/vector/log-probe/chatty').set('x-request-id', id)),
    );
    for (const id of ids) {
      const bound = children.filter((c) => c.bindings.request_id === id);
      expect(bound).toHaveLength(1);
      expect(bound[0].warn).toHaveBeenCalledTimes(1);
    }
  });

  it('logs server errors at error level, with the id on the filter line too', async () => {
    const res = await testApp.http
      .get('/api/v1/vector/log-probe/broken')
      .set('x-request-id', 'log-broken-1');
    expect(res.status).toBe(500);
    expect(accessLine(root.error, 'log-broken-1')).toEqual([
      expect.objectContaining({ res: { status: 500 } }),
      'request errored',
    ]);
    expect(accessLine(root.info, 'log-broken-1')).toBeUndefined();
    const bound = children.filter((c) => c.bindings.request_id === 'log-broken-1');
    expect(bound).toHaveLength(1);
    const [fields, message] = bound[0].error.mock.calls[0] as [object, string];
    expect(fields).toMatchObject({ context: 'ProblemDetails' });
    expect(message).toContain('broken on purpose');
  });

  it('does not log health probes', async () => {
    await testApp.http.get('/api/v1/vector/health/live').set('x-request-id', 'log-probe-live');
    expect(accessLine(root.info, 'log-probe-live')).toBeUndefined();
  });
});
