import { AddressInfo, createConnection, createServer, Server, Socket } from 'node:net';

/**
 * A loopback TCP proxy that injects faults into one client's traffic to a server (here: one
 * replica's Postgres connections). Server-to-client bytes always pass. Client-to-server chunks
 * are matched against the armed rules:
 *
 * - `hold(pattern)`: the matching chunk and everything after it on that connection wait until
 *   the rule is released (the server sees nothing; the client waits for its answer);
 * - `cut(pattern)`: the matching chunk is forwarded, then both sides of the connection are cut;
 * - no rule: pass-through.
 *
 * Matching runs on the latin1 text of the chunk joined to the tail of the previous one, so a
 * pattern that straddles two TCP chunks still matches. The Postgres wire protocol carries SQL
 * text and text parameters as plain bytes, so a pattern can name a statement (`FOR SHARE`,
 * `lock_fences`, `COPY`) or a parameter value (a lock key).
 */
export class FaultProxy {
  private readonly connections = new Set<ProxiedConnection>();
  private readonly rules = new Set<Rule>();
  private constructor(
    private readonly server: Server,
    readonly target: { host: string; port: number },
  ) {}

  static async start(target: { host: string; port: number }): Promise<FaultProxy> {
    const server = createServer();
    const proxy = new FaultProxy(server, target);
    server.on('connection', (client) => proxy.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Connections currently open through the proxy. */
  get openConnections(): number {
    return this.connections.size;
  }

  /**
   * Holds the first `times` connections (default 1) whose next chunk matches `pattern` — only
   * on a connection that earlier sent a chunk matching `after`, when given (the `after` chunk
   * must pass through the proxy after this rule was armed).
   */
  hold(pattern: RegExp, options: { after?: RegExp; times?: number } = {}): Hold {
    const rule = new Rule('hold', pattern, options.after, options.times ?? 1, (rule) =>
      this.rules.delete(rule),
    );
    this.rules.add(rule);
    return new Hold(rule, () => this.rules.delete(rule));
  }

  /** Forwards the first chunk matching `pattern`, then cuts that connection (both sides). */
  cut(pattern: RegExp, options: { after?: RegExp; times?: number } = {}): Cut {
    const rule = new Rule('cut', pattern, options.after, options.times ?? 1, (rule) =>
      this.rules.delete(rule),
    );
    this.rules.add(rule);
    return new Cut(rule, () => this.rules.delete(rule));
  }

  /** Disarms every rule and lets every held connection go on: plain pass-through. */
  passThrough(): void {
    for (const rule of [...this.rules]) rule.release();
    this.rules.clear();
  }

  /** Cuts every open connection (as a network failure would). */
  cutAll(): void {
    for (const connection of [...this.connections]) connection.destroy();
  }

  async close(): Promise<void> {
    this.passThrough();
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    const upstream = createConnection(this.target.port, this.target.host);
    const connection = new ProxiedConnection(client, upstream, this.rules, () =>
      this.connections.delete(connection),
    );
    this.connections.add(connection);
  }
}

type RuleKind = 'hold' | 'cut';

class Rule {
  /** Connections that sent a chunk matching `after` since the rule was armed. */
  readonly primed = new WeakSet<ProxiedConnection>();
  readonly held = new Set<ProxiedConnection>();
  matched = 0;
  released = false;
  private readonly matchWaiters: (() => void)[] = [];

  constructor(
    readonly kind: RuleKind,
    readonly pattern: RegExp,
    readonly after: RegExp | undefined,
    private remaining: number,
    private readonly retire: (rule: Rule) => void,
  ) {}

  /** Whether this rule takes the chunk (and counts it). */
  take(connection: ProxiedConnection, text: string, fresh: number): boolean {
    if (this.released || this.remaining <= 0) return false;
    if (this.after && !this.primed.has(connection)) {
      if (matchesFrom(this.after, text, fresh)) this.primed.add(connection);
      return false;
    }
    if (!matchesFrom(this.pattern, text, fresh)) return false;
    this.remaining--;
    this.matched++;
    if (this.kind === 'hold') this.held.add(connection);
    for (const resolve of this.matchWaiters.splice(0)) resolve();
    if (this.remaining <= 0 && this.kind === 'cut') this.retire(this);
    return true;
  }

  whenMatched(count: number): Promise<void> {
    if (this.matched >= count) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => (this.matched >= count ? resolve() : this.matchWaiters.push(check));
      this.matchWaiters.push(check);
    });
  }

  release(): void {
    this.released = true;
    this.remaining = 0;
    for (const connection of this.held) connection.resume(this);
    this.held.clear();
    this.retire(this);
  }
}

/** An armed rule as a test sees it: waits for its matches, and can be disarmed. */
abstract class ArmedRule {
  constructor(
    protected readonly rule: Rule,
    private readonly disarm: () => void,
  ) {}

  /** Resolves once `count` connections (default 1) have matched, or rejects after `timeoutMs`. */
  matched(timeoutMs = 10_000, count = 1): Promise<void> {
    return withDeadline(
      this.rule.whenMatched(count),
      timeoutMs,
      `no connection sent ${String(this.rule.pattern)} within ${timeoutMs} ms`,
    );
  }

  /** Lets anything held go on, in order, and stops matching. */
  protected stop(): void {
    this.rule.release();
    this.disarm();
  }
}

/** A hold rule: `matched` resolves once a connection is held; `release()` lets it go on. */
export class Hold extends ArmedRule {
  get heldConnections(): number {
    return this.rule.held.size;
  }

  /** Forwards what was held, in order, and stops holding. */
  release(): void {
    this.stop();
  }
}

/** A cut rule: `matched` resolves once a connection was cut after forwarding a match. */
export class Cut extends ArmedRule {
  get count(): number {
    return this.rule.matched;
  }

  cancel(): void {
    this.stop();
  }
}

/** Tail of the previous chunk kept for matching across chunk boundaries. */
const CARRY = 512;

class ProxiedConnection {
  private readonly queue: Buffer[] = [];
  /** The rules holding this connection; data flows while the set is empty. */
  private readonly holders = new Set<Rule>();
  private carry = '';
  private closed = false;

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    private readonly rules: Set<Rule>,
    private readonly onClose: () => void,
  ) {
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on('data', (chunk: Buffer) => this.fromClient(chunk));
    upstream.on('data', (chunk: Buffer) => {
      if (!client.destroyed) client.write(chunk);
    });
    for (const socket of [client, upstream]) {
      socket.on('error', () => this.destroy());
      socket.on('close', () => this.destroy());
    }
  }

  private fromClient(chunk: Buffer): void {
    if (this.holders.size > 0) {
      this.queue.push(chunk);
      return;
    }
    const text = this.carry + chunk.toString('latin1');
    for (const rule of [...this.rules]) {
      if (!rule.take(this, text, this.carry.length)) continue;
      if (rule.kind === 'hold') {
        // Matched again when released (by then this rule no longer takes it).
        this.holders.add(rule);
        this.queue.push(chunk);
        return;
      }
      this.upstream.write(chunk, () => this.destroy());
      return;
    }
    this.carry = text.slice(-CARRY);
    this.upstream.write(chunk);
  }

  resume(rule: Rule): void {
    this.holders.delete(rule);
    if (this.holders.size > 0 || this.closed) return;
    const pending = this.queue.splice(0);
    for (const chunk of pending) this.fromClient(chunk);
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.client.destroy();
    this.upstream.destroy();
    this.onClose();
  }
}

/**
 * Whether `pattern` matches `text` somewhere that reaches past `fresh` (the carried tail of the
 * previous chunk ends there): a match wholly inside the tail was seen with that chunk already.
 */
function matchesFrom(pattern: RegExp, text: string, fresh: number): boolean {
  const global = new RegExp(
    pattern.source,
    pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`,
  );
  for (const match of text.matchAll(global)) {
    if (match.index + Math.max(1, match[0].length) > fresh) return true;
  }
  return false;
}

function withDeadline(promise: Promise<void>, timeoutMs: number, message: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<void>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), timeoutMs);
      // A deadline nobody waits for any more must not keep the test process alive.
      timer.unref();
    }),
  ]).finally(() => clearTimeout(timer));
}
