import { startTestApp, TestApp } from '../support/app';
import { ProbeModule } from '../support/probe.module';

const PROBLEM = /^application\/problem\+json/;
const BODY_LIMIT = 4096;

describe('request validation and HTTP errors', () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await startTestApp({ BODY_LIMIT_BYTES: String(BODY_LIMIT) }, [ProbeModule]);
  });
  afterAll(() => t?.close());

  const post = (body: unknown) =>
    t.http
      .post('/api/v1/vector/test-probe')
      .set('Content-Type', 'application/json')
      .send(JSON.stringify(body));

  it('accepts a valid body and transforms it into its DTO class', async () => {
    const res = await post({ name: 'ok', count: 3, items: [{ obj_ref: 'q1' }] }).expect(200);
    expect(res.body).toEqual({
      received: { name: 'ok', count: 3, items: [{ obj_ref: 'q1' }] },
      is_instance: true,
    });
  });

  it('refuses an unknown body field with 400 problem+json naming it', async () => {
    const res = await post({ name: 'ok', count: 3, sneaky: true }).expect(400);
    expect(res.headers['content-type']).toMatch(PROBLEM);
    expect(res.body).toMatchObject({
      type: 'about:blank',
      title: 'Validation failed',
      status: 400,
    });
    expect(res.body.errors).toEqual([
      { field: 'sneaky', message: 'property sneaky should not exist' },
    ]);
    expect(res.body).not.toHaveProperty('stack');
  });

  it('lists every invalid field, nested ones with their path', async () => {
    const res = await post({
      name: '',
      count: 'many',
      items: [{ obj_ref: 'x' }, { obj_ref: 7, extra: 1 }],
    }).expect(400);
    const fields = (res.body.errors as { field: string }[]).map((e) => e.field);
    expect(new Set(fields)).toEqual(
      new Set(['name', 'count', 'items[1].obj_ref', 'items[1].extra']),
    );
  });

  it('answers malformed JSON with a 400 problem', async () => {
    const res = await t.http
      .post('/api/v1/vector/test-probe')
      .set('Content-Type', 'application/json')
      .send('{"name": ')
      .expect(400);
    expect(res.headers['content-type']).toMatch(PROBLEM);
    expect(res.body.status).toBe(400);
  });

  it('answers a body over BODY_LIMIT_BYTES with a 413 problem', async () => {
    const res = await post({ name: 'x'.repeat(BODY_LIMIT), count: 1 }).expect(413);
    expect(res.headers['content-type']).toMatch(PROBLEM);
    expect(res.body).toMatchObject({ title: 'Payload Too Large', status: 413 });
  });

  it('answers an unsupported media type with a 415 problem', async () => {
    const res = await t.http
      .post('/api/v1/vector/test-probe')
      .set('Content-Type', 'application/x-unknown')
      .send('name=x')
      .expect(415);
    expect(res.headers['content-type']).toMatch(PROBLEM);
  });
});
