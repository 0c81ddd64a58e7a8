import { createHash } from 'node:crypto';
import { Cluster, Command, Redis } from 'ioredis';

// Bulk replies as strings, as ioredis' own commands give them (a bare Command gives Buffers).
const UTF8 = { replyEncoding: 'utf8' } as const;

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
    const args = [this.sha, keys.length, ...keys, ...argv];
    try {
      return await redis.sendCommand(new Command('evalsha', args, UTF8));
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      args[0] = this.lua;
      return redis.sendCommand(new Command('eval', args, UTF8));
    }
  }
}
