import { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

/** What every worker line carries; the rest depends on the worker. */
export interface WorkerEvent {
  event: string;
  message?: string;
}

/**
 * A test worker script as a child process: commands go to its stdin as JSON lines, events come
 * back as JSON lines on its stdout and are awaited as they arrive (no polling), each wait with a
 * deadline. A worker that reports an `error` event or exits fails every pending wait at once,
 * with its output in the message.
 */
export class JsonLineWorker<E extends WorkerEvent> {
  readonly events: E[] = [];
  output = '';
  readonly exited: Promise<unknown>;
  private readonly watchers = new Set<() => void>();
  private failure?: Error;

  constructor(
    protected readonly child: ChildProcess,
    private readonly name = 'worker',
  ) {
    this.exited = once(child, 'exit').then(
      ([code, signal]) => this.fail(`exited (code ${String(code)}, ${String(signal)})`),
      (error: Error) => this.fail(`did not start: ${error.message}`),
    );
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.output += `${line}\n`;
      if (!line.startsWith('{')) return;
      const event = JSON.parse(line) as E;
      this.events.push(event);
      if (event.event === 'error') this.fail(`failed: ${event.message}`);
      for (const watch of [...this.watchers]) watch();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Writes one command line to the worker. */
  protected send(command: object): void {
    this.child.stdin!.write(`${JSON.stringify(command)}\n`);
  }

  /** The first value `check` finds in the events (checked again on every new event). */
  until<T>(check: (events: E[]) => T | undefined, what: string, timeoutMs = 15_000) {
    return new Promise<T>((resolve, reject) => {
      const finish = (error?: Error, value?: T) => {
        clearTimeout(timer);
        this.watchers.delete(watch);
        if (error) {
          reject(
            new Error(
              `waiting for ${what} from ${this.name} ${this.pid}: ${error.message}\n--- worker output ---\n${this.output}`,
            ),
          );
        } else resolve(value as T);
      };
      const watch = () => {
        const value = check(this.events);
        if (value !== undefined) finish(undefined, value);
        else if (this.failure) finish(this.failure);
      };
      const timer = setTimeout(
        () => finish(new Error(`timed out after ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.watchers.add(watch);
      watch();
    });
  }

  signal(signal: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }

  /** Asks it to close its clients and exit; SIGKILL if it has not within 3 s (or is stopped). */
  async stop(): Promise<void> {
    this.signal('SIGCONT');
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.stdin!.end(`${JSON.stringify({ cmd: 'exit' })}\n`);
    }
    const timer = setTimeout(() => this.signal('SIGKILL'), 3_000);
    await this.exited;
    clearTimeout(timer);
  }

  private fail(reason: string): void {
    this.failure ??= new Error(reason);
    for (const watch of [...this.watchers]) watch();
  }
}
