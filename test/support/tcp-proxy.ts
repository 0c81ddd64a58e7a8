import { once } from 'node:events';
import { Server, Socket, createServer } from 'node:net';

/** Where a cut happens relative to the matching data. */
export type CutWhen =
  /** The data reaches the server, the server answers, and the answer is dropped: a lost reply. */
  | 'after'
  /** The data never reaches the server: a lost request. */
  | 'before';

interface CutRule {
  matches(chunk: Buffer): boolean;
  when: CutWhen;
  done(): void;
}

interface Link {
  client: Socket;
  upstream?: Socket;
}

/**
 * A loopback TCP proxy in front of one server (a private redis-server, Postgres, ...), for
 * injecting network faults at an exact point of a conversation:
 *
 * - `cutOnce(pattern)`: the next chunk a client sends that matches `pattern` is forwarded, and
 *   the client's connection is cut before the server's answer can come back (`when: 'after'`,
 *   the default), or the chunk is dropped and the connection cut (`when: 'before'`). For Redis,
 *   a pattern such as the SHA of a Lua script picks out one EVALSHA.
 * - `holdNewConnections()` / `releaseNewConnections()`: clients that (re)connect meanwhile are
 *   accepted but not served, so a test can act between a cut and the client's reconnection.
 * - `pause()` / `resume()`: traffic stops both ways on every connection (a black hole).
 * - `cutAll()`: every open connection is cut at once.
 *
 * Chunks are matched as they arrive from the socket (latin1 text), so a command split across
 * chunks may be missed; commands of a few hundred bytes sent at once arrive whole on loopback.
 */
export class TcpProxy {
  private readonly links = new Set<Link>();
  private readonly rules: CutRule[] = [];
  private held: Link[] | undefined;
  private paused = false;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly targetPort: number,
    private readonly targetHost: string,
  ) {}

  /** Listens on a port the OS hands out and forwards to `targetHost:targetPort`. */
  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    if (typeof address !== 'object' || !address) throw new Error('proxy has no port');
    const proxy = new TcpProxy(server, address.port, targetPort, targetHost);
    server.on('connection', (client) => proxy.accept(client));
    return proxy;
  }

  /** Open client connections (held ones included). */
  get connections(): number {
    return this.links.size;
  }

  /**
   * Arms a one-shot cut on the next matching chunk from any client. Resolves once the cut is
   * done; for `'after'`, only once the server has answered (so it has run the request) and its
   * answer has been dropped.
   */
  cutOnce(pattern: RegExp | string, { when = 'after' }: { when?: CutWhen } = {}): Promise<void> {
    return new Promise((resolve) => {
      this.rules.push({
        matches: (chunk) => {
          const text = chunk.toString('latin1');
          return typeof pattern === 'string' ? text.includes(pattern) : pattern.test(text);
        },
        when,
        done: resolve,
      });
    });
  }

  /** From now on, new client connections wait (accepted, unserved) until released. */
  holdNewConnections(): void {
    this.held ??= [];
  }

  /** Serves the held connections and stops holding new ones. */
  releaseNewConnections(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const link of held) if (!link.client.destroyed) this.connectUpstream(link);
  }

  /** Stops forwarding in both directions on every connection, without closing any. */
  pause(): void {
    this.paused = true;
    for (const link of this.links) {
      link.client.pause();
      link.upstream?.pause();
    }
  }

  resume(): void {
    this.paused = false;
    for (const link of this.links) {
      link.client.resume();
      link.upstream?.resume();
    }
  }

  /** Cuts every open connection, as a network failure would. */
  cutAll(): void {
    for (const link of [...this.links]) this.drop(link);
  }

  async close(): Promise<void> {
    this.cutAll();
    this.held = undefined;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    const link: Link = { client };
    this.links.add(link);
    client.setNoDelay(true);
    client.on('error', () => this.drop(link));
    client.on('close', () => this.drop(link));
    if (this.held) {
      client.pause();
      this.held.push(link);
      return;
    }
    this.connectUpstream(link);
  }

  private connectUpstream(link: Link): void {
    const { client } = link;
    const upstream = new Socket();
    link.upstream = upstream;
    upstream.setNoDelay(true);
    upstream.on('error', () => this.drop(link));
    upstream.on('close', () => this.drop(link));
    upstream.on('data', (chunk: Buffer) => {
      if (!client.write(chunk)) upstream.pause();
    });
    client.on('drain', () => !this.paused && upstream.resume());
    upstream.on('drain', () => !this.paused && client.resume());
    client.on('data', (chunk: Buffer) => this.forward(link, chunk));
    upstream.connect(this.targetPort, this.targetHost, () => {
      if (!this.paused) client.resume();
    });
    // Data the client sent before the upstream connected is buffered by the socket.
    if (this.paused) client.pause();
  }

  private forward(link: Link, chunk: Buffer): void {
    const upstream = link.upstream!;
    const index = this.rules.findIndex((rule) => rule.matches(chunk));
    if (index < 0) {
      if (!upstream.write(chunk)) link.client.pause();
      return;
    }
    const [rule] = this.rules.splice(index, 1);
    // Detached first, so that neither the answer nor the close reaches the client's side late.
    this.links.delete(link);
    link.client.removeAllListeners('data');
    upstream.removeAllListeners('data');
    upstream.removeAllListeners('close');
    link.client.destroy();
    if (rule.when === 'before') {
      upstream.destroy();
      rule.done();
      return;
    }
    // Half-close after the request: the server runs it, answers into the void, then closes.
    upstream.on('data', () => undefined);
    upstream.once('close', () => rule.done());
    upstream.end(chunk);
  }

  private drop(link: Link): void {
    if (!this.links.delete(link)) return;
    link.client.destroy();
    link.upstream?.destroy();
  }
}
