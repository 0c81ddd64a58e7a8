import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { requireBuild } from './service-process';

const SCRIPT = join(__dirname, 'lock-worker.js');

/** One JSON line of lock-worker.js. */
export interface WorkerEvent {
  event: string;
  pid: number;
  fence?: number;
  /** Epoch ms. */
  at?: number;
  count?: number;
  removed?: boolean;
  holderTtlMs?: number | null;
  ok?: boolean;
  error?: string;
  message?: string;
  signalAborted?: boolean;
  reason?: string;
  name?: string;
}

export type WorkerCommand =
  | { cmd: 'mutex'; key: string; iterations: number; ttlMs: number; data: string }
  | { cmd: 'hold'; key: string; ttlMs: number }
  | { cmd: 'take'; key: string; ttlMs: number; waitTimeoutMs: number; write?: boolean }
  | { cmd: 'write' }
  | { cmd: 'release' }
  | { cmd: 'exit' };

interface Waiter {
  matches(event: WorkerEvent): boolean;
  resolve(event: WorkerEvent): void;
  reject(error: Error): void;
}

/**
 * test/support/lock-worker.js as a child process: commands go to its stdin, events are awaited
 * as they arrive on its stdout (no polling), each wait with its own deadline. A worker that
 * reports an error or exits fails every pending wait at once, with its output in the message.
 */
export class LockWorker {
  readonly events: WorkerEvent[] = [];
  /** Everything the worker printed, events and library log lines, for failure messages. */
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly waiters = new Set<Waiter>();
  private failure?: Error;

  private constructor(readonly child: ChildProcess) {
    this.exited = once(child, 'exit').then(
      ([code, signal]) => {
        this.fail(
          new Error(`lock worker ${child.pid} exited (code ${String(code)}, ${String(signal)})`),
        );
        return { code: code as number | null, signal: signal as NodeJS.Signals | null };
      },
      (error: Error) => {
        this.fail(new Error(`lock worker did not start: ${error.message}`));
        return { code: null, signal: null };
      },
    );
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.output += `${line}\n`;
      if (!line.startsWith('{')) return;
      const event = JSON.parse(line) as WorkerEvent;
      this.events.push(event);
      if (event.event === 'error') {
        this.fail(new Error(`lock worker ${child.pid} failed: ${event.message}`));
      }
      for (const waiter of [...this.waiters]) {
        if (waiter.matches(event)) {
          this.waiters.delete(waiter);
          waiter.resolve(event);
        }
      }
    });
  }

  static start(redisUrl: string, databaseUrl: string, writesTable: string): LockWorker {
    requireBuild();
    const child = spawn(process.execPath, [SCRIPT, redisUrl, databaseUrl, writesTable], {
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return new LockWorker(child);
  }

  get pid(): number {
    return this.child.pid!;
  }

  send(command: WorkerCommand): void {
    this.child.stdin!.write(`${JSON.stringify(command)}\n`);
  }

  /** The first event named `name` (also one that came already), within `timeoutMs`. */
  next(name: string, timeoutMs = 10_000): Promise<WorkerEvent> {
    const matches = (event: WorkerEvent) => event.event === name;
    const seen = this.events.find(matches);
    if (seen) return Promise.resolve(seen);
    if (this.failure) return Promise.reject(this.explain(this.failure, name));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(this.explain(new Error(`timed out after ${timeoutMs} ms`), name));
      }, timeoutMs);
      const waiter: Waiter = {
        matches,
        resolve: (event) => {
          clearTimeout(timer);
          resolve(event);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(this.explain(error, name));
        },
      };
      this.waiters.add(waiter);
    });
  }

  signal(signal: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }

  /** SIGKILL (after SIGCONT, in case it is stopped) and wait until it is gone. */
  async kill(): Promise<void> {
    this.signal('SIGCONT');
    this.signal('SIGKILL');
    await this.exited;
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of [...this.waiters]) {
      this.waiters.delete(waiter);
      waiter.reject(error);
    }
  }

  private explain(error: Error, name: string): Error {
    return new Error(
      `waiting for "${name}" from lock worker ${this.child.pid}: ${error.message}\n--- worker output ---\n${this.output}`,
    );
  }
}
