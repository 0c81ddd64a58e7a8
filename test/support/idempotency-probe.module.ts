import { randomUUID } from 'node:crypto';
import {
  BadRequestException,
  Body,
  Controller,
  HttpCode,
  Injectable,
  Module,
  Post,
} from '@nestjs/common';
import { IsOptional, IsString } from 'class-validator';
import { IdempotentRoute } from '../../src/idempotency';

class EchoDto {
  @IsString()
  text!: string;

  @IsOptional()
  @IsString()
  mode?: 'fail' | 'reject' | 'hold';
}

/** Counts handler runs and lets a test hold a request in flight. */
@Injectable()
export class IdempotencyProbeState {
  runs = 0;
  private releaseHeld?: () => void;
  held = false;

  hold(): Promise<void> {
    this.held = true;
    return new Promise((resolve) => (this.releaseHeld = resolve));
  }

  release(): void {
    this.held = false;
    this.releaseHeld?.();
  }
}

/** A POST route with Idempotency-Key support, for the interceptor's e2e tests. */
@Controller('test-idempotency')
class IdempotencyProbeController {
  constructor(private readonly state: IdempotencyProbeState) {}

  @Post()
  @HttpCode(200)
  @IdempotentRoute()
  async run(@Body() body: EchoDto): Promise<{ run: number; nonce: string; text: string }> {
    this.state.runs++;
    if (body.mode === 'fail') throw new Error('server-side failure');
    if (body.mode === 'reject') throw new BadRequestException('rejected by the handler');
    if (body.mode === 'hold') await this.state.hold();
    return { run: this.state.runs, nonce: randomUUID(), text: body.text };
  }
}

@Module({ controllers: [IdempotencyProbeController], providers: [IdempotencyProbeState] })
export class IdempotencyProbeModule {}
