import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { freePort } from './ports';
import { waitFor } from './wait';

/**
 * A private redis-server on a spare loopback port, for tests that stop or kill Redis without
 * touching the machine's shared instance: they can crash it (SIGKILL), pause it (SIGSTOP),
 * resume it (SIGCONT) and start it again on the same port. Nothing is persisted, so a restart
 * comes back empty, as a cache-only Redis does after a crash. Only the process started here is
 * ever signalled.
 */
export class PrivateRedis {
  private process?: ChildProcess;
  private paused = false;

  private constructor(readonly port: number) {}

  static async start(): Promise<PrivateRedis> {
    const server = new PrivateRedis(await freePort());
    await server.start();
    return server;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  get running(): boolean {
    const child = this.process;
    return child !== undefined && child.exitCode === null && child.signalCode === null;
  }

  /** Starts the server (again) on its port and waits until it answers PING. */
  async start(): Promise<void> {
    if (this.running) throw new Error(`redis-server on ${this.port} is already running`);
    this.process = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    this.paused = false;
    await waitFor(() => this.ping(), { what: `redis-server on port ${this.port}` });
  }

  /** SIGKILL: gone at once, as in a crash; everything it held is lost. */
  async kill(): Promise<void> {
    const child = this.process;
    if (!child || !this.running) return;
    const exited = once(child, 'exit');
    if (this.paused) child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exited;
    this.process = undefined;
    this.paused = false;
  }

  /** SIGKILL without waiting, for exit handlers. */
  killNow(): void {
    if (!this.running) return;
    this.process!.kill('SIGCONT');
    this.process!.kill('SIGKILL');
  }

  /** SIGSTOP: connections stay open, nothing answers (a hung server or a network partition). */
  pause(): void {
    if (!this.running) throw new Error('redis-server is not running');
    this.process!.kill('SIGSTOP');
    this.paused = true;
  }

  resume(): void {
    if (!this.running) return;
    this.process!.kill('SIGCONT');
    this.paused = false;
  }

  /** Whether `key` exists (a raw RESP EXISTS), for tests that wait for a lease to lapse. */
  exists(key: string): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const socket = connect(this.port, '127.0.0.1');
      socket.setTimeout(1_000);
      const length = Buffer.byteLength(key);
      socket.once('connect', () => socket.write(`*2\r\n$6\r\nEXISTS\r\n$${length}\r\n${key}\r\n`));
      socket.once('data', (data) => {
        socket.destroy();
        const reply = data.toString();
        if (reply.startsWith(':')) resolve(reply.startsWith(':1'));
        else reject(new Error(`EXISTS ${key}: ${reply.trim()}`));
      });
      const fail = (error?: Error) => {
        socket.destroy();
        reject(error ?? new Error(`EXISTS ${key}: timed out`));
      };
      socket.once('error', fail);
      socket.once('timeout', fail);
    });
  }

  /** A raw RESP PING: no client library, so no reconnect or teardown timers left behind. */
  ping(): Promise<boolean> {
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
