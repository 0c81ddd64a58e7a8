import { Socket, connect } from 'node:net';

/**
 * A load generator's HTTP/1.1 client: a fixed set of kept-alive sockets, one request in flight
 * on each, requests written as one buffer and answers read by Content-Length (all this service
 * sends). It does a fraction of node:http's work per request, so on a two-core machine the
 * client takes as little CPU from the service and Postgres as pg's client takes from Postgres
 * on the raw SQL side; what the benchmark then compares is the service, not two clients.
 */
export class LeanHttpClient {
  private readonly idle: Connection[] = [];
  private readonly queue: PendingRequest[] = [];
  private readonly connections: Connection[] = [];

  constructor(
    private readonly base: URL,
    size: number,
  ) {
    for (let i = 0; i < size; i++) {
      const connection = new Connection(base, () => this.onIdle(connection));
      this.connections.push(connection);
      this.idle.push(connection);
    }
  }

  /** POSTs a JSON body; resolves with the parsed answer, rejects unless the status is 200. */
  post(path: string, body: string): Promise<Record<string, unknown>> {
    const payload = Buffer.from(body);
    const head =
      `POST ${this.base.pathname}${path} HTTP/1.1\r\nhost: ${this.base.host}\r\n` +
      `content-type: application/json\r\ncontent-length: ${payload.length}\r\n\r\n`;
    const request = Buffer.concat([Buffer.from(head), payload]);
    return new Promise((resolve, reject) => {
      const pending = { request, path, resolve, reject };
      const connection = this.idle.pop();
      if (connection) connection.send(pending);
      else this.queue.push(pending);
    });
  }

  close(): void {
    for (const connection of this.connections) connection.close();
  }

  private onIdle(connection: Connection): void {
    const next = this.queue.shift();
    if (next) connection.send(next);
    else this.idle.push(connection);
  }
}

interface PendingRequest {
  request: Buffer;
  path: string;
  resolve(body: Record<string, unknown>): void;
  reject(error: Error): void;
}

const HEADER_END = Buffer.from('\r\n\r\n');

class Connection {
  private socket?: Socket;
  private current?: PendingRequest;
  private received: Buffer = Buffer.alloc(0);

  constructor(
    private readonly base: URL,
    private readonly onIdle: () => void,
  ) {}

  send(pending: PendingRequest): void {
    this.current = pending;
    this.received = Buffer.alloc(0);
    (this.socket ??= this.open()).write(pending.request);
  }

  close(): void {
    this.socket?.destroy();
  }

  private open(): Socket {
    const socket = connect({ host: this.base.hostname, port: Number(this.base.port) });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    // A socket already given up on (its request failed) must not fail the next one.
    socket.on('error', (error) => socket === this.socket && this.fail(error));
    socket.on('close', () => socket === this.socket && this.fail(new Error('connection closed')));
    return socket;
  }

  private onData(chunk: Buffer): void {
    this.received = this.received.length === 0 ? chunk : Buffer.concat([this.received, chunk]);
    const headerEnd = this.received.indexOf(HEADER_END);
    if (headerEnd < 0) return;
    const head = this.received.toString('latin1', 0, headerEnd);
    const length = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (!length) return this.fail(new Error(`no content-length in answer: ${head}`));
    const bodyStart = headerEnd + HEADER_END.length;
    if (this.received.length < bodyStart + Number(length[1])) return;
    const text = this.received.toString('utf8', bodyStart, bodyStart + Number(length[1]));
    const status = Number(head.slice(9, 12));
    const pending = this.current!;
    this.current = undefined;
    this.onIdle();
    if (status === 200) pending.resolve(JSON.parse(text) as Record<string, unknown>);
    else pending.reject(new Error(`${pending.path}: ${status} ${text}`));
  }

  private fail(error: Error): void {
    this.socket?.destroy();
    this.socket = undefined;
    const pending = this.current;
    this.current = undefined;
    if (pending) {
      pending.reject(error);
      this.onIdle();
    }
  }
}
