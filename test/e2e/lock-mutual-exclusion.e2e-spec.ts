import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Redis from 'ioredis';
import { TEST_REDIS_URL } from '../support/env';
import { ServiceProcess } from '../support/service-process';

const PROCESSES = 4;
const ITERATIONS = 40;

interface Section {
  pid: number;
  start: number;
  end: number;
  fence: number;
  concurrent: number;
}

describe('lock mutual exclusion across OS processes', () => {
  it(`${PROCESSES} processes × ${ITERATIONS} critical sections on one key never overlap; fences strictly increase`, async () => {
    const key = `lock:test:mutex:${randomBytes(4).toString('hex')}`;
    const contenders = Array.from({ length: PROCESSES }, () =>
      ServiceProcess.startScript(join(__dirname, '../support/lock-contender.js'), [
        TEST_REDIS_URL,
        key,
        String(ITERATIONS),
      ]),
    );
    const exits = await Promise.all(contenders.map((contender) => contender.exited));
    for (const exit of exits) expect([exit.code, exit.stderr]).toEqual([0, '']);

    const redis = new Redis(TEST_REDIS_URL);
    try {
      const sections = (await redis.lrange(`${key}:log`, 0, -1)).map(
        (line) => JSON.parse(line) as Section,
      );
      await redis.del(`${key}:log`, `${key}:inside`);
      expect(sections).toHaveLength(PROCESSES * ITERATIONS);
      expect(new Set(sections.map((section) => section.pid)).size).toBe(PROCESSES);
      // Nobody else was inside when each section looked.
      expect(sections.every((section) => section.concurrent === 1)).toBe(true);
      // In fence order, each section ends before the next one starts.
      const ordered = [...sections].sort((a, b) => a.fence - b.fence);
      for (let i = 1; i < ordered.length; i++) {
        expect(ordered[i].fence).toBeGreaterThan(ordered[i - 1].fence);
        expect(ordered[i].start).toBeGreaterThanOrEqual(ordered[i - 1].end);
      }
      // And the log, appended in order, is in fence order too.
      expect(sections.map((section) => section.fence)).toEqual(
        ordered.map((section) => section.fence),
      );
    } finally {
      await redis.quit();
    }
  }, 60_000);
});
