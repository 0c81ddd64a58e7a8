import { Controller, Delete, Get, NotFoundException, Param, Req } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import { ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import { RequireScope } from '../auth/auth.decorators';
import { ApiAuthenticated, ApiBadRequest, ApiNotFound } from '../common/api-docs';
import { ForceReleaseDto, LockStatusDto } from './dto/lock.dto';
import { LockService, isLockKey } from '../lock';
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

  /** Removes the lock whoever holds it; the old holder's later fenced writes fail. Audited. */
  @Delete('lock/:lock_key')
  @ApiOperation({ summary: 'Force-release a stuck lock (admin, audited); bumps its fence' })
  @ApiOkResponse({ type: ForceReleaseDto })
  @ApiNotFound('The lock is not held')
  @RequireScope('admin')
  async forceRelease(@Param('lock_key') lockKey: string, @Req() request: FastifyRequest) {
    this.assertLockKey(lockKey);
    const result = await this.locks.forceRelease(lockKey, {
      by: request.caller?.keyName ?? 'anonymous',
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
