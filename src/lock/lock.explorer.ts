import { Injectable, OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { buildKey, findDecoratedMethods, replaceMethod } from '../common/decorated-methods';
import { MAX_TTL_MS } from './lock-durations';
import { WITH_LOCK_METADATA } from './lock.constants';
import { LockService } from './lock.service';
import { WithLockMetadata } from './with-lock.decorator';

/** Wraps every @WithLock provider method at start-up; refuses misuse before traffic arrives. */
@Injectable()
export class LockExplorer implements OnModuleInit {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
    private readonly locks: LockService,
  ) {}

  onModuleInit(): void {
    const methods = findDecoratedMethods<WithLockMetadata>(
      this.discovery,
      this.scanner,
      this.reflector,
      WITH_LOCK_METADATA,
      '@WithLock',
    );
    for (const { instance, name, options, where } of methods) {
      validateOptions(options, where);
      const lockOptions = {
        ttlMs: options.ttlMs,
        waitTimeoutMs: options.waitTimeoutMs,
        fair: options.fair,
        operation: options.operation ?? where,
      };
      replaceMethod(instance, name, async (run, args) =>
        this.locks.withLock(buildKey(options.key, args), run, lockOptions),
      );
    }
  }
}

function validateOptions(options: WithLockMetadata, where: string): void {
  const problems: string[] = [];
  if (typeof options.key !== 'function') problems.push('key must be a function of the arguments');
  if (
    options.ttlMs !== undefined &&
    !(Number.isInteger(options.ttlMs) && options.ttlMs > 0 && options.ttlMs <= MAX_TTL_MS)
  ) {
    problems.push(`ttlMs must be a positive integer up to ${MAX_TTL_MS}`);
  }
  if (
    options.waitTimeoutMs !== undefined &&
    !(Number.isInteger(options.waitTimeoutMs) && options.waitTimeoutMs >= 0)
  ) {
    problems.push('waitTimeoutMs must be a non-negative integer');
  }
  if (problems.length > 0) throw new Error(`@WithLock on ${where}: ${problems.join('; ')}`);
}
