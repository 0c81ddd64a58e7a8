import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import { Injectable, OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance, FastifyRequest } from 'fastify';

export const NDJSON_CONTENT_TYPE = 'application/x-ndjson';

/**
 * The body of an NDJSON request, unread: the handler streams it. What the Idempotency-Key
 * interceptor fingerprints (it serialises request.body before the handler runs, when nothing
 * has been read yet) is `toJSON()`: the query string, Content-Length and Content-Digest (when
 * sent). The lines themselves are not part of the fingerprint: a replay with the same key,
 * query and length gets the first response even if the lines differ.
 */
export class NdjsonBody {
  constructor(
    readonly stream: Readable,
    private readonly fingerprint: Record<string, unknown>,
  ) {}

  toJSON(): Record<string, unknown> {
    return this.fingerprint;
  }
}

/**
 * Registers the `application/x-ndjson` body parser: it hands the raw request stream to the
 * handler as an NdjsonBody, without buffering it, so BODY_LIMIT_BYTES does not apply (Fastify
 * enforces its body limit only for the parsers that read the body themselves).
 */
@Injectable()
export class NdjsonBodyParser implements OnModuleInit {
  constructor(private readonly adapterHost: HttpAdapterHost) {}

  onModuleInit(): void {
    const instance = this.adapterHost.httpAdapter?.getInstance?.<FastifyInstance>();
    if (!instance?.addContentTypeParser || instance.hasContentTypeParser(NDJSON_CONTENT_TYPE)) {
      return;
    }
    instance.addContentTypeParser(
      NDJSON_CONTENT_TYPE,
      (request: FastifyRequest, payload: Readable, done: (error: null, body: unknown) => void) => {
        const header = (name: string) => {
          const value = request.headers[name];
          return Array.isArray(value) ? value.join(',') : (value ?? null);
        };
        done(
          null,
          new NdjsonBody(payload, {
            content_type: NDJSON_CONTENT_TYPE,
            query: request.query,
            content_length: header('content-length'),
            content_digest: header('content-digest'),
          }),
        );
      },
    );
  }
}

/** A line longer than the limit (no newline within it). */
export class LineTooLongError extends Error {
  constructor(
    readonly line: number,
    readonly limit: number,
  ) {
    super(`line ${line} is longer than ${limit} characters`);
  }
}

/**
 * The lines of a UTF-8 stream (\n or \r\n), numbered from 1. Reads through an iterator that does
 * not destroy the stream when the caller stops early (a bad line): the caller then drains the
 * rest, so the client can finish sending and read the 400, instead of a reset connection.
 */
export async function* numberedLines(
  stream: Readable,
  maxLineChars: number,
): AsyncGenerator<{ line: number; text: string }> {
  const decoder = new StringDecoder('utf8');
  let rest = '';
  let line = 0;
  for await (const chunk of stream.iterator({ destroyOnReturn: false })) {
    const text = rest + decoder.write(chunk as Buffer);
    let start = 0;
    for (let end = text.indexOf('\n'); end !== -1; end = text.indexOf('\n', start)) {
      line++;
      if (end - start > maxLineChars) throw new LineTooLongError(line, maxLineChars);
      yield { line, text: trimCr(text.slice(start, end)) };
      start = end + 1;
    }
    rest = text.slice(start);
    if (rest.length > maxLineChars) throw new LineTooLongError(line + 1, maxLineChars);
  }
  rest += decoder.end();
  if (rest !== '') yield { line: line + 1, text: trimCr(rest) };
}

function trimCr(text: string): string {
  return text.endsWith('\r') ? text.slice(0, -1) : text;
}
