import { randomBytes } from 'node:crypto';
import { describeAnswer } from '../support/namespace-checks';
import { ReplicaSet } from '../support/replica-harness';

const DIMENSION = 16;
const RUN_MS = 8_000;

/** A random unit-ish vector: distinctive enough that its own item is its nearest neighbour. */
function distinctiveVector(): number[] {
  return Array.from({ length: DIMENSION }, () => Math.random() * 2 - 1);
}

/**
 * R9 — read-your-writes across replicas while the active slot keeps switching. A client upserts
 * one new obj_ref with its own embedding on one replica and at once searches for that vector
 * (k=1) on another, alternating the two replicas, while a third replica runs rebuild after
 * rebuild (each switches the active slot). Every search must find the client's own item.
 */
describe('R9 read-your-writes across replicas during repeated rebuild switches', () => {
  let set: ReplicaSet;
  const namespace = `r9-${randomBytes(3).toString('hex')}`;
  const table = 'questions';

  beforeAll(async () => {
    set = await ReplicaSet.start({ replicas: 3, proxied: false });
    const items = Array.from({ length: 300 }, (_, i) => ({
      obj_ref: `seed-${i}`,
      content: `seed ${i}`,
      embedding: distinctiveVector(),
    }));
    const seeded = await set
      .replica(0)
      .post('/batch-upsert', { items, table_name: table, namespace });
    expect(seeded.status).toBe(200);
  }, 60_000);

  afterAll(async () => {
    await ReplicaSet.stopAll();
  }, 30_000);

  it('R9 never misses its own acknowledged item', async () => {
    let running = true;
    const rebuilds: string[] = [];
    const rebuilder = (async () => {
      while (running) {
        const answer = await set.replica(2).post('/rebuild-index', { namespace, force: true });
        rebuilds.push(answer.status === 200 ? 'ok' : describeAnswer(answer));
      }
    })();

    const misses: string[] = [];
    const failures: string[] = [];
    let checks = 0;
    const until = performance.now() + RUN_MS;
    try {
      for (let i = 0; performance.now() < until; i++) {
        const [writer, reader] =
          i % 2 === 0 ? [set.replica(0), set.replica(1)] : [set.replica(1), set.replica(0)];
        const vector = distinctiveVector();
        const objRef = `mine-${i}`;
        const upsert = await writer.post('/batch-upsert', {
          items: [{ obj_ref: objRef, content: `mine ${i}`, embedding: vector }],
          table_name: table,
          namespace,
        });
        if (upsert.status !== 200) {
          failures.push(`upsert ${objRef} on replica ${writer.index}: ${describeAnswer(upsert)}`);
          continue;
        }
        const search = await reader.post<{ slot: number; results: { obj_ref: string }[] }>(
          '/search',
          {
            table_name: table,
            namespace,
            vector,
            k: 1,
          },
        );
        checks++;
        if (search.status !== 200) {
          failures.push(
            `search for ${objRef} on replica ${reader.index}: ${describeAnswer(search)}`,
          );
        } else if (search.body.results[0]?.obj_ref !== objRef) {
          misses.push(
            `${objRef} written via replica ${writer.index} (slot ${(upsert.body as { slot: number }).slot}), searched via replica ${reader.index}: slot ${search.body.slot} answered ${search.body.results[0]?.obj_ref ?? 'nothing'}`,
          );
        }
      }
    } finally {
      running = false;
      await rebuilder;
    }
    // The scenario happened: the active slot switched several times under the client.
    expect(rebuilds.filter((r) => r === 'ok').length).toBeGreaterThanOrEqual(3);
    expect(rebuilds.filter((r) => r !== 'ok')).toEqual([]);
    expect(checks).toBeGreaterThan(30);
    expect(failures).toEqual([]);
    // Invariant: an acknowledged upsert is visible to every later search on any replica.
    expect({ misses: misses.slice(0, 8), count: misses.length, checks }).toEqual({
      misses: [],
      count: 0,
      checks,
    });
  }, 60_000);
});
