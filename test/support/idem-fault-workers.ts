import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { SingleflightOutcome } from '../../src/idempotency';
import { requireBuild } from './service-process';

const SCRIPT = join(__dirname, 'idem-fault-worker.js');

/** What Probe.work in idem-fault-worker.js returns: a nonce only that execution could produce. */
export interface FaultWorkResult {
  nonce: string;
  pid: number;
  execution: number;
}

/** One JSON line of idem-fault-worker.js. */
export interface FaultEvent {
  event: string;
  pid: number;
  /** Epoch ms, when the event was said. */
  at: number;
  id?: string;
  execution?: number;
  hasSignal?: boolean;
  reason?: string;
  result?: FaultWorkResult;
  aborted?: boolean | null;
  outcome?: SingleflightOutcome<FaultWorkResult>;
  name?: string;
  message?: string;
  metrics?: Record<string, number>;
}

export interface FaultWorkerSettings {
  redisUrl: string;
  /** in_progress_ttl of the decorated method, seconds. */
  ttl: number;
  pollMs: number;
  waitTimeoutMs: number;
}

/**
 * idem-fault-worker.js as a child process: commands go to its stdin; events are awaited as they
 * arrive on its stdout, each wait with a deadline. A worker that reports an error or exits fails
 * every pending wait at once, with its output in the message.
 */
export class FaultWorker {
  readonly events: FaultEvent[] = [];
  output = '';
  readonly exited: Promise<unknown>;
  private readonly watchers = new Set<() => void>();
  private failure?: Error;
  private calls = 0;

  private constructor(private readonly child: ChildProcess) {
    this.exited = once(child, 'exit').then(
      ([code, signal]) => this.fail(`exited (code ${String(code)}, ${String(signal)})`),
      (error: Error) => this.fail(`did not start: ${error.message}`),
    );
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.output += `${line}\n`;
      if (!line.startsWith('{')) return;
      const event = JSON.parse(line) as FaultEvent;
      this.events.push(event);
      if (event.event === 'error') this.fail(`failed: ${event.message}`);
      for (const watch of [...this.watchers]) watch();
    });
  }

  /** Starts `count` workers and resolves once every one is ready. */
  static async startMany(count: number, settings: FaultWorkerSettings): Promise<FaultWorker[]> {
    requireBuild();
    const workers = Array.from({ length: count }, () => {
      const child = spawn(
        process.execPath,
        [
          SCRIPT,
          settings.redisUrl,
          String(settings.ttl),
          String(settings.pollMs),
          String(settings.waitTimeoutMs),
        ],
        { env: { PATH: process.env.PATH ?? '', NO_COLOR: '1' }, stdio: ['pipe', 'pipe', 'pipe'] },
      );
      return new FaultWorker(child);
    });
    try {
      await Promise.all(workers.map((worker) => worker.next('ready')));
    } catch (error) {
      await Promise.all(workers.map((worker) => worker.stop()));
      throw error;
    }
    return workers;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Calls the decorated method once; returns the id its events carry. */
  call(key: string, workMs: number): string {
    const id = `${this.pid}-${++this.calls}`;
    this.child.stdin!.write(`${JSON.stringify({ cmd: 'call', id, key, workMs })}\n`);
    return id;
  }

  /** The first value `check` finds in the events (checked again on every new event). */
  until<T>(check: (events: FaultEvent[]) => T | undefined, what: string, timeoutMs = 15_000) {
    return new Promise<T>((resolve, reject) => {
      const finish = (error?: Error, value?: T) => {
        clearTimeout(timer);
        this.watchers.delete(watch);
        if (error) {
          reject(
            new Error(
              `waiting for ${what} from worker ${this.pid}: ${error.message}\n--- worker output ---\n${this.output}`,
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

  /** The first event named `name` (of call `id`, if given), also one already seen. */
  next(name: string, id?: string, timeoutMs?: number): Promise<FaultEvent> {
    return this.until(
      (events) => events.find((e) => e.event === name && (id === undefined || e.id === id)),
      `"${name}"${id ? ` of ${id}` : ''}`,
      timeoutMs,
    );
  }

  /** Events of call `id` named `name`. */
  of(name: string, id: string): FaultEvent[] {
    return this.events.filter((e) => e.event === name && e.id === id);
  }

  signal(signal: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }

  /** Asks it to close and exit; SIGKILL if it has not within 3 s. */
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

/** The OS process id of a redis-server, from its own INFO (to SIGSTOP/SIGCONT it). */
export async function redisServerPid(redis: {
  info(section: string): Promise<string>;
}): Promise<number> {
  const match = /process_id:(\d+)/.exec(await redis.info('server'));
  if (!match) throw new Error('redis INFO server did not report process_id');
  return Number(match[1]);
}
