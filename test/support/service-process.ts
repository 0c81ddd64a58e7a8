import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const DIST = resolve(__dirname, '../../dist');

export function requireBuild(): void {
  if (!existsSync(join(DIST, 'main.js'))) {
    throw new Error('dist/ is missing: run `npm run build` before the e2e tests');
  }
}

export interface Exited {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a compiled entry point (dist/main.js, dist/database/migrate.cli.js) as its own OS process,
 * with exactly the given environment, from an empty directory so no `.env` is picked up.
 */
export class ServiceProcess {
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exited>;

  private constructor(readonly child: ChildProcess) {
    child.stdout?.on('data', (chunk: Buffer) => (this.stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = once(child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
      stdout: this.stdout,
      stderr: this.stderr,
    }));
  }

  static start(entry: string, env: Record<string, string>): ServiceProcess {
    requireBuild();
    const cwd = mkdtempSync(join(tmpdir(), 'vector-service-'));
    const child = spawn(process.execPath, [join(DIST, entry)], {
      cwd,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new ServiceProcess(child);
  }

  /** Runs a plain Node script (test helpers that load dist/) with the test's environment. */
  static startScript(
    script: string,
    args: string[] = [],
    { stdin = false }: { stdin?: boolean } = {},
  ): ServiceProcess {
    requireBuild();
    const child = spawn(process.execPath, [script, ...args], {
      env: { PATH: process.env.PATH ?? '' },
      stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    return new ServiceProcess(child);
  }

  /** Every stdout line parsed as JSON (throws on a line that is not). */
  jsonLogLines(): Record<string, unknown>[] {
    return this.stdout
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}
