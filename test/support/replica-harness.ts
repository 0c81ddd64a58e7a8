import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { PrivateRedis } from './redis-server';
import { testEnv, TEST_DATABASE_URL } from './env';
import { FaultProxy } from './fault-proxy';
import { createFreshDatabase, FreshDatabase } from './fresh-database';
import { freePort } from './ports';
import { Exited, ServiceProcess } from './service-process';
import { waitFor } from './wait';

/** What one HTTP call came back with; status 0 when no answer came (connection lost, timeout). */
export interface Answer<T = Record<string, unknown>> {
  status: number;
  body: T;
  headers: Headers;
  /** Milliseconds from sending to the end of the answer (or to the failure). */
  ms: number;
  /** Why no answer came, when status is 0. */
  error?: string;
}

export interface ReplicaSetOptions {
  replicas: number;
  /** Environment for every replica, over the harness defaults. */
  env?: Record<string, string>;
  /** A FaultProxy in front of Postgres for every replica (default true). */
  proxied?: boolean;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** Every set started in this process, so `stopAll` reaches one whose start had not returned. */
const liveSets = new Set<ReplicaSet>();

// Last resort if the test process exits without afterAll (a crash, a forced exit): children
// started here must not outlive it. kill() is synchronous, as an exit handler needs.
process.once('exit', () => {
  for (const set of liveSets) {
    for (const replica of set.replicas) replica.process.kill('SIGKILL');
    set.redis.killNow();
  }
});

/**
 * N replicas of the built service (dist/main.js) as OS processes on spare loopback ports, over a
 * private redis-server and a fresh database cloned from the template (migrated by the first
 * replica to start). Each replica reaches Postgres through its own FaultProxy, so a test can hold
 * or cut one replica's statements. Everything started here is stopped by `stop()`, which is safe
 * to call after a failure and more than once.
 */
export class ReplicaSet {
  readonly replicas: Replica[] = [];
  /** Checks of the fresh database by the tests (application_name reliability-check). */
  readonly db: Pool;
  readonly apiKey = randomBytes(16).toString('hex');
  private stopped = false;

  private constructor(
    readonly redis: PrivateRedis,
    readonly database: FreshDatabase,
    private readonly options: ReplicaSetOptions,
  ) {
    this.db = new Pool({
      connectionString: database.url,
      max: 3,
      application_name: 'reliability-check',
    });
    // A check connection terminated by a test's pg_terminate_backend sweep must not crash Jest.
    this.db.on('error', () => undefined);
  }

  static async start(options: ReplicaSetOptions): Promise<ReplicaSet> {
    const redis = await PrivateRedis.start();
    let database: FreshDatabase;
    try {
      database = await createFreshDatabase('vector_reliability');
    } catch (error) {
      await redis.kill();
      throw error;
    }
    const set = new ReplicaSet(redis, database, options);
    liveSets.add(set);
    try {
      for (let i = 0; i < options.replicas; i++) {
        const replica = await set.launch(i);
        set.replicas.push(replica);
        // Stopped meanwhile (a test's timeout ran out): this one was not there to be stopped.
        if (set.stopped) await replica.kill();
      }
      if (set.stopped) throw new Error('the replica set was stopped while starting');
      await Promise.all(set.replicas.map((replica) => replica.ready()));
    } catch (error) {
      await set.stop();
      throw error;
    }
    return set;
  }

  /**
   * Stops every set started in this process, also one still starting. For afterAll: a
   * beforeAll that timed out never handed its set to the test.
   */
  static async stopAll(): Promise<void> {
    await Promise.all([...liveSets].map((set) => set.stop()));
  }

  get databaseName(): string {
    return new URL(this.database.url).pathname.slice(1);
  }

  replica(index: number): Replica {
    return this.replicas[index];
  }

  /** Starts a fresh process in place of replica `index` (killed or not) and waits until ready. */
  async restart(index: number): Promise<Replica> {
    const old = this.replicas[index];
    await old.kill();
    await old.proxy?.close();
    const replica = await this.launch(index);
    this.replicas[index] = replica;
    await replica.ready();
    return replica;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    liveSets.delete(this);
    await Promise.allSettled(this.replicas.map((replica) => replica.kill()));
    await Promise.allSettled(
      this.replicas.map((replica) => replica.proxy?.close() ?? Promise.resolve()),
    );
    await this.db.end().catch(() => undefined);
    await this.redis.kill().catch(() => undefined);
    await this.database.drop().catch(() => undefined);
  }

  private async launch(index: number): Promise<Replica> {
    const upstream = new URL(TEST_DATABASE_URL);
    const proxy =
      this.options.proxied === false
        ? undefined
        : await FaultProxy.start({
            host: upstream.hostname,
            port: Number(upstream.port || 5432),
          });
    const databaseUrl = new URL(this.database.url);
    if (proxy) {
      databaseUrl.hostname = '127.0.0.1';
      databaseUrl.port = String(proxy.port);
    }
    const port = await freePort();
    const env = testEnv({
      PORT: String(port),
      DATABASE_URL: databaseUrl.toString(),
      DATABASE_POOL_MAX: '4',
      REDIS_URL: this.redis.url,
      MIGRATE_ON_START: 'true',
      LOG_LEVEL: 'warn',
      API_KEYS: `reliability:admin:${this.apiKey}`,
      EMBEDDING_DIMENSION: '16',
      REBUILD_MAINTENANCE_WORK_MEM: '64MB',
      ...this.options.env,
    });
    return new Replica(index, port, ServiceProcess.start('main.js', env), this.apiKey, proxy);
  }
}

/** One replica process, its HTTP client and its Postgres fault proxy. */
export class Replica {
  readonly url: string;
  private paused = false;

  constructor(
    readonly index: number,
    readonly port: number,
    readonly process: ServiceProcess,
    private readonly apiKey: string,
    readonly proxy?: FaultProxy,
  ) {
    this.url = `http://127.0.0.1:${port}/api/v1/vector`;
  }

  get pid(): number {
    return this.process.child.pid!;
  }

  get alive(): boolean {
    return this.process.child.exitCode === null && this.process.child.signalCode === null;
  }

  /** Waits until readiness answers 200 (Redis and Postgres reachable, migrations done). */
  async ready(timeoutMs = 30_000): Promise<void> {
    await waitFor(
      async () => {
        if (!this.alive) {
          const exited = await this.process.exited;
          throw new Error(`replica ${this.index} exited during start-up: ${describe(exited)}`);
        }
        return (await this.get('/health/ready', { timeoutMs: 2_000 })).status === 200;
      },
      { timeoutMs, intervalMs: 100, what: `replica ${this.index} ready` },
    ).catch((error: Error) => {
      throw new Error(`${error.message}\n--- replica ${this.index} output ---\n${this.output()}`, {
        cause: error,
      });
    });
  }

  /** SIGSTOP: the process keeps its sockets and leases but runs nothing. */
  pause(): void {
    if (!this.alive) throw new Error(`replica ${this.index} is not running`);
    this.process.child.kill('SIGSTOP');
    this.paused = true;
  }

  resume(): void {
    if (!this.alive) return;
    this.process.child.kill('SIGCONT');
    this.paused = false;
  }

  /** SIGKILL (after SIGCONT if paused) and wait until the process is gone. */
  async kill(): Promise<Exited> {
    if (this.alive) {
      if (this.paused) this.process.child.kill('SIGCONT');
      this.process.kill('SIGKILL');
    }
    return this.process.exited;
  }

  /** The process's stdout and stderr (warnings and errors only, LOG_LEVEL=warn), for messages. */
  output(limit = 6_000): string {
    const text = `${this.process.stdout}${this.process.stderr}`;
    return text.length > limit ? `…${text.slice(-limit)}` : text;
  }

  get<T = Record<string, unknown>>(path: string, options: RequestOptions = {}) {
    return this.request<T>('GET', path, undefined, options);
  }

  post<T = Record<string, unknown>>(path: string, body: unknown, options: RequestOptions = {}) {
    return this.request<T>('POST', path, body, options);
  }

  delete<T = Record<string, unknown>>(path: string, options: RequestOptions = {}) {
    return this.request<T>('DELETE', path, undefined, options);
  }

  /** One HTTP call that never throws: no answer within the timeout is status 0. */
  async request<T = Record<string, unknown>>(
    method: string,
    path: string,
    body?: unknown,
    { timeoutMs = DEFAULT_TIMEOUT_MS }: RequestOptions = {},
  ): Promise<Answer<T>> {
    const started = performance.now();
    try {
      const response = await fetch(`${this.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.apiKey}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not JSON: kept as text for the failure message.
      }
      return {
        status: response.status,
        body: parsed as T,
        headers: response.headers,
        ms: performance.now() - started,
      };
    } catch (error) {
      return {
        status: 0,
        body: {} as T,
        headers: new Headers(),
        ms: performance.now() - started,
        error: String((error as Error).cause ?? error),
      };
    }
  }
}

export interface RequestOptions {
  timeoutMs?: number;
}

function describe(exited: Exited): string {
  return `code ${String(exited.code)}, signal ${String(exited.signal)}`;
}
