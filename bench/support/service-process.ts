import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface BenchService {
  /** `http://127.0.0.1:<port>/api/v1/vector` */
  base: string;
  child: ChildProcess;
  /** SIGTERM, then waits for the process to exit. */
  stop: () => Promise<void>;
}

/**
 * The service as production runs it (dist/main.js; `npm run build` first) in its own process,
 * so a bench's client load does not share its event loop. Resolves once it is live.
 */
export async function startBenchService(
  databaseUrl: string,
  redisUrl: string,
  env: Record<string, string> = {},
): Promise<BenchService> {
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const child = spawn(process.execPath, [join(__dirname, '../../dist/main.js')], {
    cwd: tmpdir(),
    env: {
      PATH: process.env.PATH,
      NODE_ENV: 'test',
      DATABASE_URL: databaseUrl,
      REDIS_URL: redisUrl,
      LOG_LEVEL: 'error',
      RATE_LIMIT_WRITE_PER_MINUTE: '1000000',
      HOST: '127.0.0.1',
      PORT: String(port),
      ...env,
    },
    stdio: 'ignore',
  });
  const base = `http://127.0.0.1:${port}/api/v1/vector`;
  for (;;) {
    const live = await fetch(`${base}/health/live`).catch(() => undefined);
    if (live?.ok) break;
    if (child.exitCode !== null) throw new Error('the service did not start (run `npm run build`)');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return {
    base,
    child,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    },
  };
}
