import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { IncomingMessage, get } from 'node:http';
import { Readable } from 'node:stream';
import { Pool } from 'pg';
import { PG_POOL } from '../../src/database/database.constants';
import { ItemsService } from '../../src/vector/items.service';
import { TestApp, startTestApp } from '../support/app';
import { waitFor } from '../support/wait';

const SECRETS = {
  read: 'items-read-secret-0123456789',
  write: 'items-write-secret-0123456789',
  admin: 'items-admin-secret-0123456789',
};
const API_KEYS = `reader:read:${SECRETS.read},writer:write:${SECRETS.write},boss:admin:${SECRETS.admin}`;
const NDJSON = 'application/x-ndjson';
const DIM = 384;

interface Item {
  obj_ref: string;
  id: string | null;
  content: string;
  metadata: Record<string, unknown> | null;
  embedding?: number[];
}

interface Page {
  success: boolean;
  namespace: string;
  slot: number;
  items: Item[];
  next_cursor: string | null;
}

/** Values exact in float4, so what was sent comes back unchanged. */
const vectorFor = (n: number) =>
  Array.from({ length: DIM }, (_, i) => (((i * 7 + n * 13) % 17) + 1) / 8 - 1.0625);

describe('Vector items: fetch by obj_ref, export as keyset pages and NDJSON', () => {
  let app: TestApp;
  let pool: Pool;
  let baseUrl: string;

  beforeAll(async () => {
    app = await startTestApp({ API_KEYS, LOG_LEVEL: 'error' });
    pool = app.app.get<Pool>(PG_POOL);
    await app.app.listen(0, '127.0.0.1');
    const address = app.app.getHttpServer().address();
    if (!address || typeof address === 'string') throw new Error('not listening');
    baseUrl = `http://127.0.0.1:${address.port}/api/v1/vector`;
  });

  afterAll(async () => {
    await app.close();
  });

  const newNamespace = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
  const asReader = { authorization: `Bearer ${SECRETS.read}` };

  const upsert = (namespace: string, items: object[], table = 'questions') =>
    app.http
      .post('/api/v1/vector/batch-upsert')
      .set('authorization', `Bearer ${SECRETS.write}`)
      .send({ items, table_name: table, namespace });

  const fetchItems = (body: object) =>
    app.http.post('/api/v1/vector/items/get').set(asReader).send(body);

  const page = (query: Record<string, string | number | boolean>) =>
    app.http.get('/api/v1/vector/items').set(asReader).query(query);

  /** `count` items seeded-0000… in batches of 500, with metadata; client vectors if asked. */
  const seed = async (namespace: string, count: number, withVectors = false) => {
    for (let start = 0; start < count; start += 500) {
      const items = Array.from({ length: Math.min(500, count - start) }, (_, i) => {
        const n = start + i;
        return {
          obj_ref: `seed-${String(n).padStart(5, '0')}`,
          content: `seed item ${n} "quoted" \\ é\n\u0001\u0002`,
          id: `id-${n}`,
          metadata: { n, tags: ['a', n % 2 ? 'odd' : 'even'] },
          ...(withVectors ? { embedding: vectorFor(n) } : {}),
        };
      });
      await upsert(namespace, items).expect(200);
    }
  };

  /** Every page of an export, following next_cursor. */
  const allPages = async (namespace: string, limit: number, between?: () => Promise<void>) => {
    const pages: Page[] = [];
    let cursor: string | null = null;
    do {
      const query: Record<string, string | number> = { table_name: 'questions', namespace, limit };
      if (cursor) query.cursor = cursor;
      const response = await page(query).expect(200);
      pages.push(response.body as Page);
      cursor = (response.body as Page).next_cursor;
      if (between) await between();
    } while (cursor);
    return pages;
  };

  const fieldsOf = (body: unknown) =>
    (body as { errors: { field: string }[] }).errors.map((error) => error.field);

  const expectNoDuplicates = (refs: string[]) => {
    const counts = new Map<string, number>();
    for (const ref of refs) counts.set(ref, (counts.get(ref) ?? 0) + 1);
    expect([...counts].filter(([, count]) => count > 1)).toEqual([]);
  };

  const streamExport = (query: Record<string, string>) =>
    fetch(
      `${baseUrl}/items?${new URLSearchParams({ table_name: 'questions', ...query }).toString()}`,
      { headers: { ...asReader, accept: NDJSON } },
    );

  const activeSlotRows = async (namespace: string) => {
    const { rows } = await pool.query<{ obj_ref: string; content: string }>(
      `SELECT i.obj_ref, i.content FROM vec_questions i
       JOIN vector_slots s ON s.id = i.slot_id
       JOIN vector_namespaces n ON n.namespace = s.namespace AND n.active_slot = s.slot
       WHERE s.namespace = $1`,
      [namespace],
    );
    return new Map(rows.map((row) => [row.obj_ref, row.content]));
  };

  describe('fetch', () => {
    const namespace = newNamespace('fetch');

    beforeAll(async () => {
      await seed(namespace, 5, true);
    });

    it('returns the items found in request order, and lists the rest as not_found', async () => {
      const response = await fetchItems({
        table_name: 'questions',
        namespace,
        obj_refs: ['seed-00003', 'nope', 'seed-00000', 'seed-00004'],
      }).expect(200);
      expect(response.body).toEqual({
        success: true,
        namespace,
        slot: 1,
        items: [3, 0, 4].map((n) => ({
          obj_ref: `seed-${String(n).padStart(5, '0')}`,
          id: `id-${n}`,
          content: `seed item ${n} "quoted" \\ é\n\u0001\u0002`,
          metadata: { n, tags: ['a', n % 2 ? 'odd' : 'even'] },
        })),
        not_found: ['nope'],
      });
    });

    it('returns embeddings as arrays of numbers only when asked', async () => {
      const response = await fetchItems({
        table_name: 'questions',
        namespace,
        obj_refs: ['seed-00001', 'seed-00002'],
        include_embeddings: true,
      }).expect(200);
      expect((response.body as Page).items.map((item) => item.embedding)).toEqual([
        vectorFor(1),
        vectorFor(2),
      ]);
      const without = await fetchItems({
        table_name: 'questions',
        namespace,
        obj_refs: ['seed-00001'],
        include_embeddings: false,
      }).expect(200);
      expect(without.body.items[0]).not.toHaveProperty('embedding');
    });

    it.each([
      ['no obj_refs', { obj_refs: [] }, 'obj_refs'],
      ['1001 obj_refs', { obj_refs: Array.from({ length: 1001 }, (_, i) => `r${i}`) }, 'obj_refs'],
      ['a duplicate', { obj_refs: ['a', 'b', 'a'] }, 'obj_refs[2]'],
      ['an empty obj_ref', { obj_refs: ['a', ''] }, 'obj_refs'],
      ['a number', { obj_refs: ['a', 7] }, 'obj_refs'],
      ['an unknown table', { table_name: 'nope', obj_refs: ['a'] }, 'table_name'],
      ['a bad namespace', { namespace: 'Bad Name', obj_refs: ['a'] }, 'namespace'],
      ['a string flag', { obj_refs: ['a'], include_embeddings: 'yes' }, 'include_embeddings'],
      ['an unknown field', { obj_refs: ['a'], limit: 3 }, 'limit'],
    ])('refuses %s with 400 problem+json', async (_name, body, field) => {
      const response = await fetchItems({ table_name: 'questions', namespace, ...body });
      expect(response.status).toBe(400);
      expect(response.headers['content-type']).toContain('application/problem+json');
      expect(fieldsOf(response.body)).toContain(field);
    });

    it('answers 404 problem+json for an unknown namespace', async () => {
      const response = await fetchItems({
        table_name: 'questions',
        namespace: newNamespace('none'),
        obj_refs: ['a'],
      });
      expect(response.status).toBe(404);
      expect(response.headers['content-type']).toContain('application/problem+json');
    });
  });

  describe('scopes', () => {
    const namespace = newNamespace('scope');

    beforeAll(async () => {
      await seed(namespace, 3);
    });

    const routes = () => [
      app.http
        .post('/api/v1/vector/items/get')
        .send({ table_name: 'questions', namespace, obj_refs: ['seed-00000'] }),
      app.http.get('/api/v1/vector/items').query({ table_name: 'questions', namespace }),
      app.http
        .get('/api/v1/vector/items')
        .set('accept', NDJSON)
        .query({ table_name: 'questions', namespace }),
    ];

    it('refuses callers without a key (401) and serves the read scope and above', async () => {
      for (const request of routes()) expect((await request).status).toBe(401);
      for (const secret of Object.values(SECRETS)) {
        for (const request of routes()) {
          expect((await request.set('authorization', `Bearer ${secret}`)).status).toBe(200);
        }
      }
    });

    it('documents the routes with the read scope', async () => {
      const response = await app.http.get('/api/docs-json').expect(200);
      const paths = response.body.paths as Record<string, Record<string, Record<string, unknown>>>;
      for (const operation of [
        paths['/api/v1/vector/items/get'].post,
        paths['/api/v1/vector/items'].get,
      ]) {
        expect(operation['x-required-scope']).toBe('read');
        expect(Object.keys(operation.responses as object)).toEqual(
          expect.arrayContaining(['200', '400', '401', '403', '404']),
        );
      }
    });
  });

  describe('export as JSON pages', () => {
    it('pages through every row once, in obj_ref order, embeddings only when asked', async () => {
      const namespace = newNamespace('pages');
      await seed(namespace, 250, true);
      const pages = await allPages(namespace, 100);
      expect(pages.map((p) => p.items.length)).toEqual([100, 100, 50]);
      expect(pages[2].next_cursor).toBeNull();
      const refs = pages.flatMap((p) => p.items.map((item) => item.obj_ref));
      expect(refs).toEqual(
        Array.from({ length: 250 }, (_, n) => `seed-${String(n).padStart(5, '0')}`),
      );
      expect(pages[0].items[7]).toEqual({
        obj_ref: 'seed-00007',
        id: 'id-7',
        content: 'seed item 7 "quoted" \\ é\n\u0001\u0002',
        metadata: { n: 7, tags: ['a', 'odd'] },
      });
      const first = await page({ table_name: 'questions', namespace }).expect(200);
      expect(first.body.items).toHaveLength(100); // the default limit
      const exact = await page({
        table_name: 'questions',
        namespace,
        limit: 250,
        include_embeddings: true,
      }).expect(200);
      expect(exact.body.next_cursor).toBeNull();
      expect(exact.body.items[42].embedding).toEqual(vectorFor(42));
    });

    it.each([
      ['limit 0', { limit: 0 }, 'limit'],
      ['limit 1001', { limit: 1001 }, 'limit'],
      ['a non-numeric limit', { limit: 'ten' }, 'limit'],
      ['a garbage cursor', { cursor: 'not-a-cursor' }, 'cursor'],
      [
        'a cursor of the wrong shape',
        { cursor: Buffer.from('[1]').toString('base64url') },
        'cursor',
      ],
      ['include_embeddings=yes', { include_embeddings: 'yes' }, 'include_embeddings'],
      ['an unknown table', { table_name: 'nope' }, 'table_name'],
    ])('refuses %s with 400 problem+json', async (_name, query, field) => {
      const response = await page({ table_name: 'questions', namespace: 'default', ...query });
      expect(response.status).toBe(400);
      expect(response.headers['content-type']).toContain('application/problem+json');
      expect(fieldsOf(response.body)).toContain(field);
    });

    it("refuses another namespace's cursor, and answers 404 for an unknown namespace", async () => {
      const namespace = newNamespace('cursor');
      await seed(namespace, 3);
      const first = await page({ table_name: 'questions', namespace, limit: 1 }).expect(200);
      const other = await page({
        table_name: 'questions',
        namespace: 'default',
        cursor: first.body.next_cursor,
      });
      expect(other.status).toBe(400);
      const unknown = await page({ table_name: 'questions', namespace: newNamespace('none') });
      expect(unknown.status).toBe(404);
      expect(unknown.headers['content-type']).toContain('application/problem+json');
    });

    it('covers every row present at the start exactly once while upserts of new and existing obj_refs run', async () => {
      const namespace = newNamespace('concurrent');
      await seed(namespace, 3_000);
      const before = await activeSlotRows(namespace);
      const written = new Map<string, Set<string>>();
      for (const [ref, content] of before) written.set(ref, new Set([content]));
      let stop = false;
      let rounds = 0;
      const failures: number[] = [];
      const writers = Array.from({ length: 2 }, async (_, writer) => {
        while (!stop) {
          rounds++;
          const round = rounds;
          // New obj_refs spread over the whole key range (before and after the export's
          // position) and changes to seeded ones.
          const items = [
            ...Array.from({ length: 10 }, (_, i) => ({
              obj_ref: `seed-${String((round * 37 + i * 301) % 3_000).padStart(5, '0')}-new-${writer}-${round}`,
              content: `new ${writer} ${round} ${i}`,
            })),
            ...Array.from({ length: 10 }, (_, i) => ({
              obj_ref: `seed-${String((round * 53 + i * 293 + writer) % 3_000).padStart(5, '0')}`,
              content: `changed ${writer} ${round} ${i}`,
            })),
          ].filter((item, i, all) => all.findIndex((x) => x.obj_ref === item.obj_ref) === i);
          for (const item of items) {
            if (!written.has(item.obj_ref)) written.set(item.obj_ref, new Set());
            written.get(item.obj_ref)!.add(item.content);
          }
          const response = await upsert(namespace, items);
          if (response.status !== 200) failures.push(response.status);
        }
      });
      await waitFor(() => rounds >= 4, { what: 'upserts running' });
      const roundsAtStart = rounds;
      const pages = await allPages(namespace, 97);
      const roundsDuring = rounds - roundsAtStart;
      stop = true;
      await Promise.all(writers);

      expect(failures).toEqual([]);
      expect(roundsDuring).toBeGreaterThan(0);
      const items = pages.flatMap((p) => p.items);
      expectNoDuplicates(items.map((item) => item.obj_ref));
      const exported = new Set(items.map((item) => item.obj_ref));
      expect([...before.keys()].filter((ref) => !exported.has(ref))).toEqual([]);
      // Every exported row is a version some client wrote.
      for (const item of items) {
        expect([item.obj_ref, written.get(item.obj_ref)?.has(item.content)]).toEqual([
          item.obj_ref,
          true,
        ]);
      }
      expect(exported.size).toBeGreaterThan(before.size);
    });

    it('continues in the new slot after a rebuild switch, whether or not the old slot was dropped', async () => {
      const namespace = newNamespace('switch');
      await seed(namespace, 1_000);
      const rebuild = () =>
        app.http
          .post('/api/v1/vector/rebuild-index')
          .set('authorization', `Bearer ${SECRETS.write}`)
          .send({ namespace, force: true })
          .expect(200);
      let served = 0;
      const pages = await allPages(namespace, 100, async () => {
        served++;
        if (served === 3) {
          // Switch and drop the slot the export read: its next read fails on the dropped table.
          await rebuild();
          const cleanup = await app.http
            .post('/api/v1/vector/cleanup-slots')
            .set('authorization', `Bearer ${SECRETS.admin}`)
            .send({ namespace, keep_previous: false })
            .expect(200);
          expect(cleanup.body.dropped_slots).toEqual([1]);
          // Written to the new slot only: after the export's position, and before it.
          await upsert(namespace, [
            { obj_ref: 'seed-00999-late', content: 'late' },
            { obj_ref: 'seed-00000-late', content: 'early' },
          ]).expect(200);
        }
        // Switch only: its next read finds slot 2 no longer active.
        if (served === 6) await rebuild();
      });
      expect(pages.map((p) => p.slot)).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]);
      const refs = pages.flatMap((p) => p.items.map((item) => item.obj_ref));
      expectNoDuplicates(refs);
      expect(refs).toEqual([
        ...Array.from({ length: 1_000 }, (_, n) => `seed-${String(n).padStart(5, '0')}`),
        'seed-00999-late',
      ]);
      // A fetch right after the switch reads the new slot too.
      const fetched = await fetchItems({
        table_name: 'questions',
        namespace,
        obj_refs: ['seed-00000-late', 'seed-00500'],
      }).expect(200);
      expect(fetched.body).toMatchObject({ slot: 3, not_found: [] });
    });
  });

  describe('export as NDJSON', () => {
    const namespace = newNamespace('ndjson');

    beforeAll(async () => {
      await seed(namespace, 4_200, true);
    });

    it('streams every row of the active slot, one JSON object per line', async () => {
      const response = await streamExport({ namespace, include_embeddings: 'true' });
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toContain(NDJSON);
      const text = await response.text();
      expect(text.endsWith('\n')).toBe(true);
      const lines = text.slice(0, -1).split('\n');
      const items = lines.map((line) => JSON.parse(line) as Item);
      expect(items).toHaveLength(4_200);
      expectNoDuplicates(items.map((item) => item.obj_ref));
      items.forEach((item, n) =>
        expect(item).toEqual({
          obj_ref: `seed-${String(n).padStart(5, '0')}`,
          id: `id-${n}`,
          content: `seed item ${n} "quoted" \\ é\n\u0001\u0002`,
          metadata: { n, tags: ['a', n % 2 ? 'odd' : 'even'] },
          embedding: vectorFor(n),
        }),
      );
      const stored = await activeSlotRows(namespace);
      expect(new Set(items.map((item) => item.obj_ref))).toEqual(new Set(stored.keys()));

      const lean = await (await streamExport({ namespace })).text();
      const first = JSON.parse(lean.slice(0, lean.indexOf('\n'))) as Item;
      expect(first).toEqual({
        obj_ref: 'seed-00000',
        id: 'id-0',
        content: 'seed item 0 "quoted" \\ é\n\u0001\u0002',
        metadata: { n: 0, tags: ['a', 'even'] },
      });
      expect(lean.split('\n')).toHaveLength(4_201);
    });

    it('answers errors before the first line as problem+json', async () => {
      const unknown = await streamExport({ namespace: newNamespace('none') });
      expect(unknown.status).toBe(404);
      expect(unknown.headers.get('content-type')).toContain('application/problem+json');
      const paged = await streamExport({ namespace, limit: '10' });
      expect(paged.status).toBe(400);
      expect(((await paged.json()) as { errors: { field: string }[] }).errors).toEqual([
        expect.objectContaining({ field: 'limit' }),
      ]);
    });

    it('stops reading when the client goes away, and leaves the pool healthy', async () => {
      const service = app.app.get(ItemsService);
      const streams: Readable[] = [];
      const original = service.exportStream.bind(service);
      const spy = jest.spyOn(service, 'exportStream').mockImplementation(async (query) => {
        const stream = await original(query);
        streams.push(stream);
        return stream;
      });
      try {
        // node:http, so going away is one closed socket (fetch may open another on abort).
        const request = get(
          `${baseUrl}/items?table_name=questions&namespace=${namespace}&include_embeddings=true`,
          { headers: { ...asReader, accept: NDJSON }, agent: false },
        );
        const [response] = (await once(request, 'response')) as [IncomingMessage];
        expect(response.statusCode).toBe(200);
        const [chunk] = (await once(response, 'data')) as [Buffer];
        expect(chunk.length).toBeGreaterThan(0);
        request.destroy();
        await waitFor(() => streams[0]?.destroyed, { what: 'the export stream destroyed' });
        expect(streams[0].readableEnded).toBe(false); // cut off, not read to the end
      } finally {
        spy.mockRestore();
      }
      await waitFor(() => pool.waitingCount === 0 && pool.idleCount === pool.totalCount, {
        what: 'every pool connection idle',
      });
      const after = await fetchItems({
        table_name: 'questions',
        namespace,
        obj_refs: ['seed-04199'],
      }).expect(200);
      expect(after.body.items).toHaveLength(1);
    });

    it('leaves no connection behind when the stream is dropped before it starts (HEAD)', async () => {
      const head = await app.http
        .head('/api/v1/vector/items')
        .set(asReader)
        .set('accept', NDJSON)
        .query({ table_name: 'questions', namespace, include_embeddings: 'true' });
      expect(head.status).toBe(200);
      await waitFor(() => pool.waitingCount === 0 && pool.idleCount === pool.totalCount, {
        what: 'every pool connection idle',
        timeoutMs: 5_000,
      });
    });

    it('carries on in the new slot when a rebuild switches while the stream is paused', async () => {
      const request = get(
        `${baseUrl}/items?table_name=questions&namespace=${namespace}&include_embeddings=true`,
        { headers: { ...asReader, accept: NDJSON }, agent: false },
      );
      const [response] = (await once(request, 'response')) as [IncomingMessage];
      expect(response.statusCode).toBe(200);
      const chunks: Buffer[] = [];
      // The client stops reading at its first bytes (in the same tick, not after a poll: on a
      // loaded machine the whole export could arrive meanwhile): the export then waits, mid-page,
      // on back-pressure.
      response.on('data', (chunk: Buffer) => {
        if (chunks.length === 0) response.pause();
        chunks.push(chunk);
      });
      await waitFor(() => chunks.length > 0, { what: 'the first bytes' });
      const rebuild = await app.http
        .post('/api/v1/vector/rebuild-index')
        .set('authorization', `Bearer ${SECRETS.write}`)
        .send({ namespace, force: true })
        .expect(200);
      expect(rebuild.body.slot).toBeGreaterThan(1);
      await upsert(namespace, [{ obj_ref: 'seed-99999-late', content: 'late' }]).expect(200);
      response.resume();
      await once(response, 'end');
      expect(response.complete).toBe(true);
      const items = Buffer.concat(chunks)
        .toString('utf8')
        .trimEnd()
        .split('\n')
        .map((line) => JSON.parse(line) as Item);
      expectNoDuplicates(items.map((item) => item.obj_ref));
      expect(items.map((item) => item.obj_ref)).toEqual([
        ...Array.from({ length: 4_200 }, (_, n) => `seed-${String(n).padStart(5, '0')}`),
        'seed-99999-late',
      ]);
      expect(items[4_100].embedding).toEqual(vectorFor(4_100));
    });
  });
});
