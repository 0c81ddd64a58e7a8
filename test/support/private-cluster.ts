import { ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './ports';
import { waitFor } from './wait';

const run = promisify(execFile);

/** A private 3-master Redis Cluster on spare loopback ports, for tests only. */
export class PrivateRedisCluster {
  private constructor(
    readonly nodes: { host: string; port: number }[],
    private readonly processes: ChildProcess[],
    private readonly dir: string,
  ) {}

  static async start(masters = 3): Promise<PrivateRedisCluster> {
    const dir = mkdtempSync(join(tmpdir(), 'redis-cluster-'));
    const ports: number[] = [];
    const processes: ChildProcess[] = [];
    for (let i = 0; i < masters; i++) {
      const port = await freePort();
      ports.push(port);
      processes.push(
        spawn(
          'redis-server',
          [
            '--port',
            String(port),
            '--bind',
            '127.0.0.1',
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            join(dir, `nodes-${port}.conf`),
            '--cluster-node-timeout',
            '2000',
            '--save',
            '',
            '--appendonly',
            'no',
            '--dir',
            dir,
          ],
          { stdio: 'ignore' },
        ),
      );
    }
    const cluster = new PrivateRedisCluster(
      ports.map((port) => ({ host: '127.0.0.1', port })),
      processes,
      dir,
    );
    try {
      for (const port of ports) {
        await waitFor(async () => (await cli(port, 'PING')).trim() === 'PONG', {
          what: `node ${port}`,
        });
      }
      await run('redis-cli', [
        '--cluster',
        'create',
        ...ports.map((port) => `127.0.0.1:${port}`),
        '--cluster-yes',
      ]);
      for (const port of ports) {
        await waitFor(
          async () => (await cli(port, 'CLUSTER', 'INFO')).includes('cluster_state:ok'),
          {
            what: `cluster_state:ok on ${port}`,
            timeoutMs: 20_000,
          },
        );
      }
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.processes.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function cli(port: number, ...args: string[]): Promise<string> {
  try {
    return (await run('redis-cli', ['-p', String(port), ...args])).stdout;
  } catch {
    return '';
  }
}
