import { Injectable, OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** How a leading Idempotency-Key request settles its key from the response about to be sent. */
export type SettleResponse = (reply: FastifyReply, payload: unknown) => Promise<unknown>;

const PENDING = Symbol('idempotency:pending-response');

type PendingRequest = FastifyRequest & { [PENDING]?: SettleResponse };

/** Fastify instances whose responses pass through the onSend hook below. */
const hooked = new WeakSet<FastifyInstance>();

/** Whether responses to `request` will reach `settleBeforeSend` callbacks. */
export function responsesAreHooked(request: FastifyRequest): boolean {
  return hooked.has(request.server);
}

/** Runs `settle` on the response to `request` once it is final, before it is sent. */
export function settleBeforeSend(request: FastifyRequest, settle: SettleResponse): void {
  (request as PendingRequest)[PENDING] = settle;
}

/**
 * Installs the onSend hook through which the Idempotency-Key interceptor sees every response it
 * leads exactly as it is sent: the final status, headers and serialised body — also those that
 * the exception filter renders and headers set after the handler (`@Header`) — and can hold the
 * response until the outcome is stored, or replace it when the key's answer is another one.
 */
@Injectable()
export class IdempotencyHttpHooks implements OnModuleInit {
  constructor(private readonly adapterHost: HttpAdapterHost) {}

  onModuleInit(): void {
    // No HTTP server (an application context), or not Fastify: @IdempotentRoute refuses to lead.
    const instance: unknown = this.adapterHost.httpAdapter?.getInstance?.();
    if (!isFastify(instance) || hooked.has(instance)) return;
    instance.addHook('onSend', async (request: PendingRequest, reply, payload) => {
      const settle = request[PENDING];
      if (!settle) return payload;
      request[PENDING] = undefined;
      return settle(reply, payload);
    });
    hooked.add(instance);
  }
}

function isFastify(instance: unknown): instance is FastifyInstance {
  return (
    typeof instance === 'object' &&
    instance !== null &&
    typeof (instance as Partial<FastifyInstance>).addHook === 'function' &&
    typeof (instance as Partial<FastifyInstance>).inject === 'function'
  );
}
