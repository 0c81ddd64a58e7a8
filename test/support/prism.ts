import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { freePort } from './ports';
import { waitFor } from './wait';

/** Stoplight Prism's command-line entry (a devDependency; nobody here wrote it). */
const PRISM_CLI = resolve(__dirname, '../../node_modules/@stoplight/prism-cli/dist/index.js');

/** Problem types Prism uses for answers it makes itself instead of forwarding. */
export const PRISM_PROBLEM_PREFIX = 'https://stoplight.io/prism/errors#';

/**
 * `prism proxy <document> <upstream> --errors`: forwards each request to the service and
 * validates request and response against the OpenAPI document. With `--errors` a request that
 * breaks the document is answered by Prism (422, or 401 without credentials) and never
 * forwarded, and a response that breaks it is replaced by a 500 problem of type
 * `…#VIOLATIONS`; any violation, warnings included, is also listed in an `sl-violations`
 * header and logged ("Violation: …", or "✖ error").
 */
export class PrismProxy {
  private output = '';

  private constructor(
    private readonly child: ChildProcess,
    readonly url: string,
  ) {
    const collect = (chunk: Buffer) => (this.output += chunk.toString());
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
  }

  static async start(documentPath: string, upstream: string): Promise<PrismProxy> {
    const port = await freePort();
    const child = spawn(
      process.execPath,
      [
        PRISM_CLI,
        'proxy',
        documentPath,
        upstream,
        '--errors',
        '--port',
        String(port),
        '--host',
        '127.0.0.1',
      ],
      {
        env: { PATH: process.env.PATH ?? '', NO_COLOR: '1', FORCE_COLOR: '0' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const proxy = new PrismProxy(child, `http://127.0.0.1:${port}`);
    try {
      await waitFor(
        () => {
          if (child.exitCode !== null) throw new Error(`prism exited: ${proxy.output}`);
          return proxy.output.includes('Prism is listening');
        },
        { timeoutMs: 90_000, intervalMs: 100, what: 'Prism to listen' },
      );
    } catch (error) {
      await proxy.stop();
      throw error;
    }
    return proxy;
  }

  /** A position in Prism's log, to read what it logged about the requests sent after it. */
  mark(): number {
    return this.output.length;
  }

  /** Log lines since `mark` that report a violation or a request Prism answered itself. */
  complaintsSince(mark: number): string[] {
    return this.output
      .slice(mark)
      .split('\n')
      .filter((line) => /Violation|✖|error/i.test(line) && !/Request received/.test(line));
  }

  get log(): string {
    return this.output;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.kill('SIGTERM');
    await exited;
  }
}
