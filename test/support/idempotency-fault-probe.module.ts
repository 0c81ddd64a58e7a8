import { randomUUID } from 'node:crypto';
import {
  Body,
  Controller,
  HttpCode,
  HttpException,
  Injectable,
  Module,
  Param,
  ParseIntPipe,
  Post,
  Res,
  UnprocessableEntityException,
} from '@nestjs/common';
import { IsInt, IsOptional, IsString, Max, Min } from 'class-validator';
import type { FastifyReply } from 'fastify';
import { IdempotencyService, IdempotentRoute } from '../../src/idempotency';

class FaultProbeDto {
  @IsString()
  text!: string;

  /** Bytes of filler in the response (`blob`). */
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(10_000_000)
  pad?: number;
}

/** Counts runs, holds requests on demand and records what their abort signals said. */
@Injectable()
export class IdempotencyFaultProbeState {
  runs = 0;
  /** How many of the next requests to `held` are held until released. */
  holdNext = 0;
  private readonly releases: (() => void)[] = [];
  /** Per run of `held`: whether its idempotency signal was there and had aborted when it ended. */
  readonly signals: { run: number; present: boolean; aborted: boolean; reason?: string }[] = [];

  get heldCount(): number {
    return this.releases.length;
  }

  /** Lets the longest-held request go on. */
  releaseOne(): void {
    this.releases.shift()?.();
  }

  /** Lets every held request go on (a failed test must not leave the app unable to close). */
  releaseAll(): void {
    this.holdNext = 0;
    while (this.releases.length > 0) this.releaseOne();
  }

  hold(): Promise<void> {
    return new Promise((resolve) => this.releases.push(resolve));
  }
}

/**
 * Routes with Idempotency-Key support answering transient and deterministic statuses, extra
 * headers, large bodies, and a route that can be held in flight, for the interceptor's fault
 * tests.
 */
@Controller('test-idempotency-faults')
class IdempotencyFaultProbeController {
  private readonly seen = new Set<string>();

  constructor(private readonly state: IdempotencyFaultProbeState) {}

  /** `status` on the first run of a body, 200 afterwards: what a retry may change. */
  @Post('transient/:status')
  @HttpCode(200)
  @IdempotentRoute()
  transient(@Param('status', ParseIntPipe) status: number, @Body() body: FaultProbeDto) {
    const run = ++this.state.runs;
    if (!this.seen.has(`${status}:${body.text}`)) {
      this.seen.add(`${status}:${body.text}`);
      throw new HttpException(
        {
          message: `transient ${status}, try again`,
          retry_after_seconds: 7,
          progress_url: `/progress/${body.text}`,
        },
        status,
      );
    }
    return { run, nonce: randomUUID() };
  }

  /** 202 with Location and Retry-After set on the reply. */
  @Post('accepted')
  @IdempotentRoute()
  accepted(@Body() body: FaultProbeDto, @Res({ passthrough: true }) reply: FastifyReply) {
    const run = ++this.state.runs;
    void reply.status(202).header('Location', `/jobs/${run}`).header('Retry-After', '3');
    return { run, nonce: randomUUID(), text: body.text };
  }

  /** A deterministic 422 problem with extension fields. */
  @Post('invalid')
  @HttpCode(200)
  @IdempotentRoute()
  invalid(@Body() body: FaultProbeDto) {
    const run = ++this.state.runs;
    throw new UnprocessableEntityException({
      type: 'https://problems.example/unprocessable-thing',
      title: 'Unprocessable Entity',
      status: 422,
      detail: `cannot process ${body.text}`,
      run,
      hints: [{ field: 'text', nonce: randomUUID() }],
    });
  }

  /** A body of about `pad` bytes. */
  @Post('large')
  @HttpCode(200)
  @IdempotentRoute()
  large(@Body() body: FaultProbeDto) {
    const run = ++this.state.runs;
    return { run, nonce: randomUUID(), blob: 'x'.repeat(body.pad ?? 0) };
  }

  /** Held while `holdNext` says so; a 1 s in-progress lease. */
  @Post('held')
  @HttpCode(200)
  @IdempotentRoute({ inProgressTtl: 1 })
  async held(@Body() body: FaultProbeDto) {
    const run = ++this.state.runs;
    const getSignal = (IdempotencyService as { currentSignal?: () => AbortSignal | undefined })
      .currentSignal;
    const signal = getSignal?.();
    if (this.state.holdNext > 0) {
      this.state.holdNext--;
      await this.state.hold();
    }
    this.state.signals.push({
      run,
      present: signal !== undefined,
      aborted: signal?.aborted ?? false,
      reason: signal?.aborted ? String((signal.reason as Error)?.message) : undefined,
    });
    return { run, nonce: randomUUID(), text: body.text };
  }
}

@Module({
  controllers: [IdempotencyFaultProbeController],
  providers: [IdempotencyFaultProbeState],
})
export class IdempotencyFaultProbeModule {}
