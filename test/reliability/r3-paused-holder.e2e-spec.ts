import { randomBytes } from 'node:crypto';
import { activeSlot, slotRows } from '../support/acknowledged-writes';
import { seedNamespace } from '../support/namespace-checks';
import { ReplicaSet } from '../support/replica-harness';
import { waitFor } from '../support/wait';

/**
 * R3 — a replica paused (SIGSTOP) past its lock's lease between taking the lock and writing.
 * The fault proxy in front of replica A's Postgres holds A's upsert at a chosen statement; A is
 * then stopped until its lease (DEFAULT_LOCK_TTL_MS=1500) has lapsed, replica B writes the same
 * obj_ref under a new lease, and A is resumed. A's stale write must be refused by its fence and
 * B's later write must be what is stored.
 */
describe('R3 a holder paused past its lease is fenced out', () => {
  let set: ReplicaSet;
  const namespace = `r3-${randomBytes(3).toString('hex')}`;
  const table = 'questions';
  const lockKey = `lock:vector:upsert:${table}:${namespace}`;

  beforeAll(async () => {
    set = await ReplicaSet.start({ replicas: 2, env: { DEFAULT_LOCK_TTL_MS: '1500' } });
    await seedNamespace(set.replica(1), namespace, table);
  }, 60_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  afterEach(() => {
    set?.replica(0).resume();
    set?.replica(0).proxy?.passThrough();
  });

  const upsert = (index: number, objRef: string, content: string) =>
    set.replica(index).post('/batch-upsert', {
      items: [{ obj_ref: objRef, content }],
      table_name: table,
      namespace,
    });

  /** Waits until the lease A held has lapsed, as B's replica sees it. */
  const leaseLapsed = () =>
    waitFor(
      async () => {
        const status = await set.replica(1).get<{ locked: boolean }>(`/lock-status/${lockKey}`);
        return status.status === 200 && !status.body.locked;
      },
      { timeoutMs: 5_000, what: `${lockKey} to expire while its holder is stopped` },
    );

  const stored = async (objRef: string) => {
    const slot = await activeSlot(set.db, namespace);
    return (await slotRows(set.db, table, slot.id, [objRef])).get(objRef)?.content;
  };

  it('R3a refuses the paused write at its fence check; the newer holder’s write is stored', async () => {
    const a = set.replica(0);
    // Held before the fence check reaches Postgres: A holds the lock and is about to write.
    const hold = a.proxy!.hold(/INSERT INTO lock_fences/);
    const staleWrite = upsert(0, 'x', 'A stale');
    await hold.matched();
    a.pause();
    await leaseLapsed();

    const fresh = await upsert(1, 'x', 'B fresh');
    expect(fresh.status).toBe(200);

    a.resume();
    hold.release();
    const stale = await staleWrite;
    // Invariant: a write under a lapsed lease is refused (409 problem), never committed.
    expect(stale.status).toBe(409);
    expect(stale.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await stored('x')).toBe('B fresh');

    // A is usable again with a new lease.
    const again = await upsert(0, 'x', 'A again');
    expect(again.status).toBe(200);
    expect(await stored('x')).toBe('A again');
  }, 30_000);

  it('R3b a holder paused after its fence check cannot overwrite the newer holder’s write', async () => {
    const a = set.replica(0);
    // Held after the fence check: A's transaction has recorded its fence and is about to write
    // the item row when it stops.
    const hold = a.proxy!.hold(/INSERT INTO "vec_questions_s/);
    const lateWrite = upsert(0, 'y', 'A late');
    await hold.matched();
    a.pause();
    await leaseLapsed();

    const fresh = upsert(1, 'y', 'B after');
    // B now holds the lock; its transaction queues behind A's open one in Postgres.
    await waitFor(
      async () => {
        const status = await set.replica(1).get<{ locked: boolean }>(`/lock-status/${lockKey}`);
        return status.body.locked;
      },
      { timeoutMs: 5_000, what: 'B to take the lapsed lock' },
    );
    a.resume();
    hold.release();
    const [late, after] = await Promise.all([lateWrite, fresh]);
    // A's answer may be 200 (its fenced transaction committed before B's) or 409; B's 200, or
    // a 503 if the service bounds how long a write waits in Postgres. Never a 500.
    expect([200, 409]).toContain(late.status);
    expect([200, 503]).toContain(after.status);
    // Invariant: the newer holder's acknowledged write is what stays; the paused one never
    // overwrites it.
    if (after.status === 200) expect(await stored('y')).toBe('B after');
    else expect(await stored('y')).toBe(late.status === 200 ? 'A late' : undefined);
  }, 30_000);
});
