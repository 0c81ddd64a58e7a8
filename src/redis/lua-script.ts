import { createHash } from 'node:crypto';
import { Cluster, Command, Redis } from 'ioredis';

// Bulk replies as strings, as ioredis' own commands give them (a bare Command gives Buffers).
const UTF8 = { replyEncoding: 'utf8' } as const;
const NO_ARGS: never[] = [];

/**
 * EVALSHA or EVAL of a script, its arguments laid out here as the strings Redis receives.
 * ioredis' constructor would flatten (Array#flat) and stringify them: on Node 20 the flat alone
 * cost about a microsecond per command, as much as all the rest of building it. The array is
 * built here rather than handed in: keeping an array made by the caller made V8 promote many
 * times more to the old generation (measured: a mark-compact every few hundred ms instead of
 * one per run).
 */
class ScriptCommand extends Command {
  constructor(
    name: 'evalsha' | 'eval',
    script: string,
    keys: readonly string[],
    argv: readonly (string | number)[],
  ) {
    super(name, NO_ARGS, UTF8);
    const args = new Array<string>(2 + keys.length + argv.length);
    args[0] = script;
    args[1] = String(keys.length);
    for (let i = 0; i < keys.length; i++) args[2 + i] = keys[i];
    for (let i = 0; i < argv.length; i++) args[2 + keys.length + i] = String(argv[i]);
    this.args = args;
  }
}

/**
 * A Lua script run by its SHA1 (EVALSHA), falling back to EVAL once when the server does not
 * have it (NOSCRIPT: first use, a restarted or failed-over server); EVAL caches it again.
 *
 * Sent as a bare Command rather than through ioredis' defineCommand: that wrapper allocates
 * closures, a second promise and a copy of the arguments per call, which on a lock's
 * acquire/release path costs more than the Lua itself.
 */
export class LuaScript {
  readonly sha: string;

  constructor(readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  async run(
    redis: Redis | Cluster,
    keys: readonly string[],
    argv: readonly (string | number)[],
  ): Promise<unknown> {
    try {
      return await redis.sendCommand(new ScriptCommand('evalsha', this.sha, keys, argv));
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return redis.sendCommand(new ScriptCommand('eval', this.lua, keys, argv));
    }
  }
}
