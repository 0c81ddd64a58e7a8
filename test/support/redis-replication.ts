import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import Redis from 'ioredis';
import { freePort } from './ports';
import { waitFor } from './wait';

/** One redis-server of a private pair, on a spare loopback port, persisting nothing. */
class ReplicationNode {
  private process?: ChildProcess;
  /** An admin connection for the test (INFO, REPLICAOF), not the one the code under test uses. */
  admin!: Redis;

  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  async start(extraArgs: string[] = []): Promise<void> {
    // The full sync streams straight from memory to memory, at once: no files, no 5 s delay.
    const args = [
      ...['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      ...['--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0'],
      ...['--repl-diskless-load', 'on-empty-db', '--dir', tmpdir()],
    ];
    this.process = spawn('redis-server', [...args, ...extraArgs], { stdio: 'ignore' });
    this.admin = new Redis(this.port, '127.0.0.1', { retryStrategy: () => 50 });
    this.admin.on('error', () => undefined); // refused until the server listens
    await waitFor(() => this.admin.status === 'ready', {
      what: `redis-server on port ${this.port}`,
    });
  }

  async stop(): Promise<void> {
    this.admin?.disconnect();
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exited;
  }

  /** SIGSTOP: its connections stay open and nothing answers (a partition, a frozen VM). */
  pause(): void {
    this.process?.kill('SIGSTOP');
  }

  resume(): void {
    this.process?.kill('SIGCONT');
  }
}

/**
 * A private master and its replica (`--replicaof`) on loopback ports, for failover tests:
 * `promoteReplica()` is what a Sentinel does to the replica (REPLICAOF NO ONE), while the old
 * master keeps running, as it does during a network partition.
 */
export class PrivateReplication {
  readonly master: ReplicationNode;
  readonly replica: ReplicationNode;

  private constructor(masterPort: number, replicaPort: number) {
    this.master = new ReplicationNode(masterPort);
    this.replica = new ReplicationNode(replicaPort);
  }

  static async start(): Promise<PrivateReplication> {
    const pair = new PrivateReplication(await freePort(), await freePort());
    try {
      await pair.master.start();
      await pair.replica.start(['--replicaof', '127.0.0.1', String(pair.master.port)]);
      await waitFor(async () => /master_link_status:up/.test(await pair.replica.admin.info()), {
        what: 'the replica to sync with its master',
      });
      return pair;
    } catch (error) {
      // Nobody else holds the pair yet: stop what was started, or it outlives the test run.
      await pair.stop();
      throw error;
    }
  }

  /** Waits until the replica has acknowledged every write the master has accepted so far. */
  async synced(): Promise<void> {
    // WAIT counts acknowledgements of this connection's own writes: one write of its own makes
    // it wait for everything replicated before it too.
    await this.master.admin.incr('__synced');
    const acknowledged = (await this.master.admin.call('WAIT', '1', '5000')) as number;
    if (acknowledged < 1) throw new Error('the replica did not acknowledge the writes');
  }

  /** The replica stops replicating and accepts writes: from now on the two diverge. */
  async promoteReplica(): Promise<void> {
    await this.replica.admin.call('REPLICAOF', 'NO', 'ONE');
    await waitFor(async () => /role:master/.test(await this.replica.admin.info('replication')), {
      what: 'the replica to become a master',
    });
  }

  async stop(): Promise<void> {
    await Promise.all([this.master.stop(), this.replica.stop()]);
  }
}
