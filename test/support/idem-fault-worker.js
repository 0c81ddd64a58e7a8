/* An @Idempotent provider method in its own OS process: a Nest application context with the
 * compiled IdempotencyModule (dist/, run `npm run build`) on a real Redis, driven by JSON commands
 * on stdin, one a line; it answers with JSON events on stdout, one a line, each
 * {event, pid, at (epoch ms), ...}. Library log lines also go to stdout; events are the lines
 * starting with '{'.
 *   node idem-fault-worker.js <redisUrl> <inProgressTtlSeconds> <pollMs> <waitTimeoutMs>
 * Commands:
 *   {cmd:'call', id, key, workMs}  calls Probe.work(key, workMs, id), decorated with
 *     @Idempotent({ key: (key) => key, ... }). The method reads IdempotencyService.currentSignal(),
 *     says {event:'working', id, execution, hasSignal} (execution = INCR `<key>:runs`), says
 *     {event:'aborted', id, reason} if that signal aborts, sleeps `workMs` (ignoring the signal:
 *     a worker that does not look must still not leak its result), then says
 *     {event:'returning', id, result, aborted} and returns result = {nonce, pid, execution}.
 *     The call then says {event:'outcome', id, outcome} or {event:'failed', id, name, message},
 *     and {event:'done', id, metrics} (this process's singleflight event counts).
 *   {cmd:'exit'}  closes the application, says {event:'bye'} and exits 0. */
const { createInterface } = require('node:readline');
const { randomUUID } = require('node:crypto');
const { setTimeout: sleep } = require('node:timers/promises');
const Redis = require('ioredis');
const { Injectable, Module } = require('@nestjs/common');
const { NestFactory } = require('@nestjs/core');
const { IdempotencyModule, IdempotencyService, Idempotent } = require('../../dist/idempotency');
const { IdempotencyMetrics } = require('../../dist/idempotency/idempotency.metrics');

const [redisUrl, ttl, pollMs, waitTimeoutMs] = process.argv.slice(2);
const SCOPE = 'fault-test';
const say = (event) =>
  process.stdout.write(`${JSON.stringify({ ...event, pid: process.pid, at: Date.now() })}\n`);

const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });

class Probe {
  async work(key, workMs, id) {
    // (Absent before the abort signal was offered to decorated methods.)
    const signal =
      typeof IdempotencyService.currentSignal === 'function'
        ? IdempotencyService.currentSignal()
        : undefined;
    signal?.addEventListener('abort', () =>
      say({ event: 'aborted', id, reason: String(signal.reason?.message ?? signal.reason) }),
    );
    const execution = await redis.incr(`${key}:runs`);
    say({ event: 'working', id, execution, hasSignal: signal !== undefined });
    await sleep(workMs);
    const result = { nonce: randomUUID(), pid: process.pid, execution };
    say({ event: 'returning', id, result, aborted: signal?.aborted ?? null });
    return result;
  }
}
Injectable()(Probe);
Idempotent({
  key: (key) => key,
  scope: SCOPE,
  ttlSeconds: 60,
  inProgressTtl: Number(ttl),
  pollIntervalMs: Number(pollMs),
  waitTimeoutMs: Number(waitTimeoutMs),
})(Probe.prototype, 'work', Object.getOwnPropertyDescriptor(Probe.prototype, 'work'));

class WorkerModule {}
Module({
  imports: [IdempotencyModule.forRoot({ backend: 'redis', redis })],
  providers: [Probe],
})(WorkerModule);

async function eventCounts(metrics) {
  const counts = {};
  for (const { labels, value } of (await metrics.events.get()).values) {
    if (labels.scope === SCOPE) counts[labels.event] = (counts[labels.event] ?? 0) + value;
  }
  return counts;
}

async function main() {
  const app = await NestFactory.createApplicationContext(WorkerModule, {
    logger: ['warn', 'error'],
  });
  await app.init();
  const probe = app.get(Probe);
  const metrics = app.get(IdempotencyMetrics);
  say({ event: 'ready' });
  const exit = async () => {
    await Promise.race([app.close(), sleep(1_000, undefined, { ref: false })]).catch(() => {});
    redis.disconnect();
    say({ event: 'bye' });
    process.exit(0);
  };
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === 'call') {
      const { id, key, workMs } = command;
      probe
        .work(key, workMs, id)
        .then(
          (outcome) => say({ event: 'outcome', id, outcome }),
          (error) =>
            say({ event: 'failed', id, name: error?.name, message: String(error?.message) }),
        )
        .then(async () => say({ event: 'done', id, metrics: await eventCounts(metrics) }));
    } else if (command.cmd === 'exit') {
      await exit();
    } else {
      say({ event: 'error', message: `unknown command ${line}` });
    }
  }
  await exit();
}

main().catch((error) => {
  say({ event: 'error', message: String(error?.stack ?? error) });
  process.exit(1);
});
