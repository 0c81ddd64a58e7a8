import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { freePort } from './ports';
import { waitFor } from './wait';

/**
 * A private redis-server on a spare loopback port, for tests that stop or kill Redis without
 * touching the machine's shared instance. Nothing is persisted.
 */
export class PrivateRedis {
  private process?: ChildProcess;

  private constructor(readonly port: number) {}

  static async start(): Promise<PrivateRedis> {
    const server = new PrivateRedis(await freePort());
    await server.start();
    return server;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  async start(): Promise<void> {
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    this.process = child;
    await waitFor(() => this.ping(), { what: `redis-server on port ${this.port}` });
  }

  /** SIGKILL: the server vanishes at once, as in a crash. */
  async kill(): Promise<void> {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    this.process = undefined;
  }

  /** A raw RESP PING: no client library, so no reconnect or teardown timers left behind. */
  private ping(): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = connect(this.port, '127.0.0.1');
      socket.setTimeout(1_000);
      socket.once('connect', () => socket.write('PING\r\n'));
      socket.once('data', (data) => {
        resolve(data.toString().startsWith('+PONG'));
        socket.destroy();
      });
      const fail = () => {
        resolve(false);
        socket.destroy();
      };
      socket.once('error', fail);
      socket.once('timeout', fail);
    });
  }
}
