import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { SingleflightOutcome } from '../../src/idempotency';
import { JsonLineWorker } from './json-line-worker';
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

/** idem-fault-worker.js as a child process (see JsonLineWorker). */
export class FaultWorker extends JsonLineWorker<FaultEvent> {
  private calls = 0;

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
      return new FaultWorker(child, 'worker');
    });
    try {
      await Promise.all(workers.map((worker) => worker.next('ready')));
    } catch (error) {
      await Promise.all(workers.map((worker) => worker.stop()));
      throw error;
    }
    return workers;
  }

  /** Calls the decorated method once; returns the id its events carry. */
  call(key: string, workMs: number): string {
    const id = `${this.pid}-${++this.calls}`;
    this.send({ cmd: 'call', id, key, workMs });
    return id;
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
}

/** The OS process id of a redis-server, from its own INFO (to SIGSTOP/SIGCONT it). */
export async function redisServerPid(redis: {
  info(section: string): Promise<string>;
}): Promise<number> {
  const match = /process_id:(\d+)/.exec(await redis.info('server'));
  if (!match) throw new Error('redis INFO server did not report process_id');
  return Number(match[1]);
}
