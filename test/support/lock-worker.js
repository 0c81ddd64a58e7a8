/* A LockService in its own OS process (compiled code from dist/), driven by JSON commands on
 * stdin, one a line, and answering with JSON events on stdout, one a line ({event, pid, ...}).
 *   node lock-worker.js <redisUrl> <databaseUrl> <writesTable>
 * Says {event:'ready'} once Redis and Postgres answer. Commands:
 *   {cmd:'mutex', key, iterations, ttlMs, data}  withLock `iterations` times; each critical section
 *     checks through Redis that nobody else is inside, bumps a counter non-atomically (a lost
 *     update shows overlap) and appends {pid, start, end, fence, inside} to the list `data:log`
 *     from inside. Says {event:'done', count}.
 *   {cmd:'hold', key, ttlMs}  withLock (renewing every ttl/3): says {event:'acquired', fence, at},
 *     {event:'lost', reason, at} if handle.signal aborts, and on a later {cmd:'write'} makes a
 *     fenced write and says {event:'write', ok, error, signalAborted, reason}, then releases
 *     (withLock's release, a no-op if the lease has passed on) and says {event:'released'}.
 *   {cmd:'take', key, ttlMs, waitTimeoutMs, write}  one try (says {event:'waiting', holderTtlMs}
 *     if taken), then acquire (no renewal): {event:'acquired', fence, at}; with `write` a fenced
 *     write ({event:'write', ...}); then holds the lease until {cmd:'release'}, and says
 *     {event:'released', removed}.
 *   {cmd:'exit'}  closes everything and exits 0.
 * Library log lines also go to stdout; events are the lines starting with '{'. */
const { createInterface } = require('node:readline');
const { setTimeout: sleep } = require('node:timers/promises');
const Redis = require('ioredis');
const { Pool } = require('pg');
const { RedisLockBackend } = require('../../dist/lock/redis-lock.backend');
const { LockService } = require('../../dist/lock/lock.service');
const { LockMetrics } = require('../../dist/lock/lock.metrics');
const { PostgresFencing } = require('../../dist/lock/postgres-fencing');

const [redisUrl, databaseUrl, writesTable] = process.argv.slice(2);
const say = (event) => process.stdout.write(`${JSON.stringify({ ...event, pid: process.pid })}\n`);
/** Nanoseconds of CLOCK_MONOTONIC, which every process on this host shares. */
const now = () => process.hrtime.bigint().toString();

const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
const pool = new Pool({ connectionString: databaseUrl, max: 2 });
const locks = new LockService(
  new RedisLockBackend(redis, 'lock:__released'),
  { backend: 'redis', redis },
  new LockMetrics(),
);
const fencing = new PostgresFencing();

/** Resolvers of commands a running command waits for ('write', 'release'). */
const awaited = new Map();
const commandOf = (name) => new Promise((resolve) => awaited.set(name, resolve));

async function fencedWrite(handle) {
  try {
    await fencing.transaction(pool, handle, (client) =>
      client.query(`INSERT INTO ${writesTable} (lock_key, writer, fence) VALUES ($1, $2, $3)`, [
        handle.key,
        process.pid,
        handle.fence,
      ]),
    );
    return { ok: true };
  } catch (error) {
    return { ok: false, error: error.name, message: error.message };
  }
}

async function mutex({ key, iterations, ttlMs, data }) {
  let count = 0;
  for (let i = 0; i < iterations; i++) {
    await locks.withLock(
      key,
      async (handle) => {
        const start = now();
        const inside = await redis.incr(`${data}:inside`);
        // Read-modify-write in separate round trips: only exclusion keeps it from losing updates.
        const counter = Number(await redis.get(`${data}:counter`));
        await sleep(Math.random() * 3);
        await redis.set(`${data}:counter`, counter + 1);
        const end = now();
        await redis.rpush(
          `${data}:log`,
          JSON.stringify({ pid: process.pid, start, end, fence: handle.fence, inside }),
        );
        await redis.decr(`${data}:inside`);
      },
      { ttlMs, waitTimeoutMs: 20_000 },
    );
    count++;
    // A little time outside the lock lets the other processes in between.
    if (Math.random() < 0.5) await sleep(Math.random() * 2);
  }
  say({ event: 'done', count });
}

async function hold({ key, ttlMs }) {
  await locks.withLock(
    key,
    async (handle) => {
      handle.signal.addEventListener('abort', () =>
        say({ event: 'lost', reason: handle.signal.reason?.name, at: Date.now() }),
      );
      const write = commandOf('write');
      say({ event: 'acquired', fence: handle.fence, at: Date.now() });
      await write;
      const result = await fencedWrite(handle);
      say({
        event: 'write',
        ...result,
        signalAborted: handle.signal.aborted,
        reason: handle.signal.reason?.name,
      });
    },
    { ttlMs, waitTimeoutMs: 0 },
  );
  say({ event: 'released' });
}

async function take({ key, ttlMs, waitTimeoutMs, write }) {
  let handle = await locks.tryAcquire(key, { ttlMs });
  if (!handle) {
    const status = await locks.status(key);
    say({ event: 'waiting', holderTtlMs: status.ttlMs, at: Date.now() });
    handle = await locks.acquire(key, { ttlMs, waitTimeoutMs });
  }
  say({ event: 'acquired', fence: handle.fence, at: Date.now() });
  if (write) say({ event: 'write', ...(await fencedWrite(handle)) });
  await commandOf('release');
  say({ event: 'released', removed: await handle.release() });
}

async function exit(code) {
  await locks.onApplicationShutdown().catch(() => undefined);
  await redis.quit().catch(() => redis.disconnect());
  await pool.end().catch(() => undefined);
  process.exit(code);
}

const run = (command, work) =>
  work(command).catch((error) => {
    say({ event: 'error', cmd: command.cmd, name: error.name, message: String(error) });
  });

async function main() {
  await redis.ping();
  await pool.query('SELECT 1');
  say({ event: 'ready' });
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() === '') continue;
    const command = JSON.parse(line);
    if (awaited.has(command.cmd)) {
      awaited.get(command.cmd)(command);
      awaited.delete(command.cmd);
    } else if (command.cmd === 'mutex') void run(command, mutex);
    else if (command.cmd === 'hold') void run(command, hold);
    else if (command.cmd === 'take') void run(command, take);
    else if (command.cmd === 'exit') break;
    else say({ event: 'error', message: `unknown command ${line}` });
  }
  // stdin closed (the test went away) or an exit command.
  await exit(0);
}

main().catch((error) => {
  say({ event: 'error', name: error.name, message: String(error) });
  void exit(1);
});
