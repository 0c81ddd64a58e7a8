import fc from 'fast-check';
import { Histogram, Registry } from 'prom-client';
import { TalliedHistogram } from '../../src/metrics/tallied-histogram';

const BUCKETS = [0.001, 0.01, 0.1, 1, 10];

/** The same observations through prom-client's Histogram and a TalliedHistogram. */
async function exposition(observations: [string, number][]) {
  const reference = new Registry();
  const tallied = new Registry();
  const histogram = new Histogram({
    name: 'h_seconds',
    help: 'help',
    labelNames: ['operation'],
    buckets: BUCKETS,
    registers: [reference],
  });
  const fast = new TalliedHistogram({
    name: 'h_seconds',
    help: 'help',
    labelName: 'operation',
    buckets: BUCKETS,
    registers: [tallied],
  });
  for (const [operation, value] of observations) {
    histogram.labels({ operation }).observe(value);
    fast.tally(operation).observe(value);
  }
  return { expected: await reference.metrics(), actual: await tallied.metrics(), tallied };
}

describe('TalliedHistogram', () => {
  it('exposes exactly what prom-client Histogram exposes for the same observations', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.tuple(
            fc.constantFrom('a', 'b', 'c'),
            fc.oneof(
              fc.constantFrom(...BUCKETS, 0, 100),
              fc.double({ min: 0, max: 20, noNaN: true }),
            ),
          ),
          { maxLength: 60 },
        ),
        async (observations) => {
          const { expected, actual } = await exposition(observations);
          expect(actual).toBe(expected);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('is cleared by Registry#resetMetrics and keeps counting on tallies already handed out', async () => {
    const { tallied } = await exposition([['a', 0.5]]);
    const metric = tallied.getSingleMetric('h_seconds') as unknown as TalliedHistogram;
    tallied.resetMetrics();
    expect(await tallied.metrics()).toContain('h_seconds_count{operation="a"} 0');
    metric.tally('a').observe(2);
    expect(await tallied.metrics()).toContain('h_seconds_count{operation="a"} 1');
    expect(await tallied.metrics()).toContain('h_seconds_bucket{le="10",operation="a"} 1');
  });
});
