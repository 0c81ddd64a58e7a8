import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { AddressInfo } from 'node:net';

export interface EmbeddingsRequest {
  authorization?: string;
  model: string;
  input: string[];
}

/** What to answer to one request; by default a valid embedding per input. */
export type Answer =
  | { kind: 'ok' }
  | { kind: 'status'; status: number; retryAfter?: string }
  | { kind: 'dimension'; dimension: number }
  | { kind: 'count'; count: number }
  | { kind: 'shuffle' }
  | { kind: 'hang' }
  /** Answers normally once `until` settles: holds the caller at a known point. */
  | { kind: 'wait'; until: Promise<unknown> };

/** A local OpenAI-compatible /v1/embeddings server whose answers a test scripts in order. */
export class FakeEmbeddingsServer {
  readonly requests: EmbeddingsRequest[] = [];
  private readonly script: Answer[] = [];
  private constructor(
    private readonly server: Server,
    readonly dimension: number,
  ) {}

  static async start(dimension: number): Promise<FakeEmbeddingsServer> {
    const server = createServer();
    const fake = new FakeEmbeddingsServer(server, dimension);
    server.on(
      'request',
      (request: IncomingMessage, response: ServerResponse) => void fake.handle(request, response),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return fake;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Answers for the next requests, in order; afterwards requests succeed. */
  answer(...answers: Answer[]): void {
    this.script.push(...answers);
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let raw = '';
    for await (const chunk of request) raw += String(chunk);
    const body = JSON.parse(raw) as { model: string; input: string[] };
    this.requests.push({ authorization: request.headers.authorization, ...body });
    const answer = this.script.shift() ?? { kind: 'ok' };
    if (answer.kind === 'hang') return;
    if (answer.kind === 'wait') await answer.until.catch(() => undefined);
    if (answer.kind === 'status') {
      response.writeHead(
        answer.status,
        answer.retryAfter ? { 'retry-after': answer.retryAfter } : {},
      );
      response.end('{"error":"scripted"}');
      return;
    }
    const dimension = answer.kind === 'dimension' ? answer.dimension : this.dimension;
    const count = answer.kind === 'count' ? answer.count : body.input.length;
    let data = Array.from({ length: count }, (_, index) => ({
      index,
      embedding: vectorFor(body.input[index] ?? '', dimension),
    }));
    if (answer.kind === 'shuffle') data = [...data].reverse();
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ object: 'list', data, model: body.model }));
  }
}

/** Deterministic: the first component carries the text length, so order can be checked. */
export function vectorFor(text: string, dimension: number): number[] {
  return Array.from({ length: dimension }, (_, i) => (i === 0 ? text.length + 1 : 1 / (i + 1)));
}
