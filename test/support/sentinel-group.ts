import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Redis from 'ioredis';
import { freePort } from './ports';
import { PrivateReplication } from './redis-replication';
import { waitFor } from './wait';

export const SENTINEL_MASTER_NAME = 'mymaster';

/**
 * A private Redis master, its replica and three Sentinels, all on loopback ports the OS hands
 * out, for tests of the service in REDIS_MODE=sentinel through a real failover. Sentinels
 * declare the master down after 1 s without answers and promote the replica; only processes
 * started here are ever signalled.
 */
export class PrivateSentinelGroup {
  private readonly sentinels: ChildProcess[] = [];
  private readonly admins: Redis[] = [];

  private constructor(
    readonly replication: PrivateReplication,
    readonly sentinelPorts: number[],
    private readonly dir: string,
  ) {}

  static async start(): Promise<PrivateSentinelGroup> {
    const replication = await PrivateReplication.start();
    const ports = [await freePort(), await freePort(), await freePort()];
    const group = new PrivateSentinelGroup(
      replication,
      ports,
      mkdtempSync(join(tmpdir(), 'sentinels-')),
    );
    try {
      for (const port of ports) await group.startSentinel(port);
      // Each Sentinel has found the replica and the two other Sentinels (hello messages).
      await waitFor(
        async () => {
          for (const admin of group.admins) {
            const replicas = (await admin.call('SENTINEL', 'REPLICAS', SENTINEL_MASTER_NAME)) as [];
            const others = (await admin.call('SENTINEL', 'SENTINELS', SENTINEL_MASTER_NAME)) as [];
            if (replicas.length < 1 || others.length < 2) return false;
          }
          return true;
        },
        { timeoutMs: 20_000, intervalMs: 200, what: 'the Sentinels to know each other' },
      );
      return group;
    } catch (error) {
      await group.stop();
      throw error;
    }
  }

  /** `host:port,…` for REDIS_SENTINELS. */
  get sentinelList(): string {
    return this.sentinelPorts.map((port) => `127.0.0.1:${port}`).join(',');
  }

  /** The port the Sentinels currently name as master. */
  async masterPort(): Promise<number> {
    const [, port] = (await this.admins[0].call(
      'SENTINEL',
      'GET-MASTER-ADDR-BY-NAME',
      SENTINEL_MASTER_NAME,
    )) as [string, string];
    return Number(port);
  }

  /** Waits until the Sentinels have promoted the replica. */
  async promoted(timeoutMs = 20_000): Promise<void> {
    await waitFor(async () => (await this.masterPort()) === this.replication.replica.port, {
      timeoutMs,
      intervalMs: 100,
      what: 'the Sentinels to promote the replica',
    });
  }

  async stop(): Promise<void> {
    for (const admin of this.admins) admin.disconnect();
    await Promise.all(
      this.sentinels.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }),
    );
    await this.replication.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async startSentinel(port: number): Promise<void> {
    const master = this.replication.master.port;
    const file = join(this.dir, `sentinel-${port}.conf`);
    // Sentinel rewrites its own configuration file: one writable file per Sentinel.
    writeFileSync(
      file,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${this.dir}`,
        `sentinel monitor ${SENTINEL_MASTER_NAME} 127.0.0.1 ${master} 2`,
        `sentinel down-after-milliseconds ${SENTINEL_MASTER_NAME} 1000`,
        `sentinel failover-timeout ${SENTINEL_MASTER_NAME} 5000`,
        `sentinel parallel-syncs ${SENTINEL_MASTER_NAME} 1`,
        '',
      ].join('\n'),
    );
    this.sentinels.push(spawn('redis-server', [file, '--sentinel'], { stdio: 'ignore' }));
    const admin = new Redis(port, '127.0.0.1', { retryStrategy: () => 50 });
    admin.on('error', () => undefined); // refused until it listens
    this.admins.push(admin);
    await waitFor(() => admin.status === 'ready', { what: `sentinel on port ${port}` });
  }
}
