import {
  ConflictException,
  Controller,
  Delete,
  Get,
  NotFoundException,
  Param,
  Query,
  Req,
} from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import { ApiOkResponse, ApiOperation, ApiQuery, ApiTags } from '@nestjs/swagger';
import { RequireScope } from '../auth/auth.decorators';
import { ApiAuthenticated, ApiBadRequest, ApiConflict, ApiNotFound } from '../common/api-docs';
import { ForceReleaseDto, LockStatusDto } from './dto/lock.dto';
import { LockHolderChangedError, LockService, isLockKey } from '../lock';
import { problem } from '../common/problem';
import { invalidRequest } from '../common/validation';

/** Lock inspection and the admins' force-release, for stuck locks. */
@ApiTags('operations')
@ApiAuthenticated()
@ApiBadRequest()
@Controller()
export class OperationsController {
  constructor(private readonly locks: LockService) {}

  @Get('lock-status/:lock_key')
  @ApiOperation({ summary: 'Whether a lock is held, its remaining TTL, holder and fencing token' })
  @ApiOkResponse({ type: LockStatusDto })
  async lockStatus(@Param('lock_key') lockKey: string) {
    this.assertLockKey(lockKey);
    const status = await this.locks.status(lockKey);
    return {
      lock_key: lockKey,
      locked: status.locked,
      ttl_ms: status.ttlMs,
      holder: status.holder && {
        instance_id: status.holder.instanceId,
        pid: status.holder.pid,
        operation: status.holder.operation ?? null,
        acquired_at: new Date(status.holder.acquiredAt).toISOString(),
      },
      fencing_token: status.fence,
    };
  }

  /**
   * Removes the lock of one holder: the one with `fencing_token` (as lock-status showed it), else
   * the current one. The old holder's later fenced writes fail. Audited. Repeating the request
   * with the same token answers the same and never evicts the holder that came next.
   */
  @Delete('lock/:lock_key')
  @ApiOperation({ summary: 'Force-release a stuck lock (admin, audited); bumps its fence' })
  @ApiQuery({
    name: 'fencing_token',
    required: false,
    schema: { type: 'integer', minimum: 0 },
    description:
      'The fencing token of the holder to remove, as lock-status reported it. Without it, whoever holds the lock now.',
  })
  @ApiOkResponse({ type: ForceReleaseDto })
  @ApiNotFound('The lock is not held')
  @ApiConflict('The lock is now held by another holder than the one with fencing_token')
  @RequireScope('admin')
  async forceRelease(
    @Param('lock_key') lockKey: string,
    @Req() request: FastifyRequest,
    @Query('fencing_token') fencingToken?: string,
  ) {
    this.assertLockKey(lockKey);
    const fence = this.parseFencingToken(fencingToken);
    const result = await this.locks
      .forceRelease(lockKey, { fence, by: request.caller?.keyName ?? 'anonymous' })
      .catch((error: unknown) => {
        if (!(error instanceof LockHolderChangedError)) throw error;
        throw new ConflictException(
          problem(
            409,
            `Lock ${lockKey} is now held by the holder with fencing token ${error.currentFence}, not ${error.expectedFence}; nothing was released.`,
            { current_fencing_token: error.currentFence },
          ),
        );
      });
    if (!result.released) {
      throw new NotFoundException(`Lock ${lockKey} is not held.`);
    }
    return {
      success: true,
      released: true,
      lock_key: lockKey,
      previous_holder: result.previousHolder && {
        instance_id: result.previousHolder.instanceId,
        pid: result.previousHolder.pid,
        operation: result.previousHolder.operation ?? null,
        acquired_at: new Date(result.previousHolder.acquiredAt).toISOString(),
      },
      fencing_token: result.fence,
    };
  }

  private parseFencingToken(value: string | undefined): number | undefined {
    if (value === undefined) return undefined;
    const fence = Number(value);
    if (typeof value !== 'string' || !/^\d{1,16}$/.test(value) || !Number.isSafeInteger(fence)) {
      throw invalidRequest([
        { field: 'fencing_token', message: 'must be a whole number, 0 or more' },
      ]);
    }
    return fence;
  }

  private assertLockKey(lockKey: string): void {
    if (!isLockKey(lockKey, this.locks.prefix)) {
      throw invalidRequest([
        {
          field: 'lock_key',
          message: `must be a lock key under "${this.locks.prefix}" (letters, digits, _ : . - @ / = + and one {hash tag})`,
        },
      ]);
    }
  }
}
