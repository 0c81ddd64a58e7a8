import { Injectable, OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { buildKey, findDecoratedMethods, replaceMethod } from '../common/decorated-methods';
import { IDEMPOTENT_METADATA, IdempotentMetadata } from './idempotent.decorator';
import { IdempotencyService } from './idempotency.service';

/** Wraps every @Idempotent provider method at start-up; refuses misuse before traffic arrives. */
@Injectable()
export class IdempotencyExplorer implements OnModuleInit {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
    private readonly idempotency: IdempotencyService,
  ) {}

  onModuleInit(): void {
    const methods = findDecoratedMethods<IdempotentMetadata>(
      this.discovery,
      this.scanner,
      this.reflector,
      IDEMPOTENT_METADATA,
      '@Idempotent',
    );
    for (const { instance, name, options, where } of methods) {
      validateOptions(options, where);
      replaceMethod(instance, name, async (run, args) =>
        this.idempotency.singleflight(buildKey(options.key, args), () => Promise.resolve(run()), {
          scope: options.scope,
          ttl_seconds: options.ttlSeconds,
          in_progress_ttl: options.inProgressTtl,
          wait_timeout_ms: options.waitTimeoutMs,
          poll_interval_ms: options.pollIntervalMs,
          force: options.force ? options.force(...args) : false,
        }),
      );
    }
  }
}

function validateOptions(options: IdempotentMetadata, where: string): void {
  const problems: string[] = [];
  if (typeof options.key !== 'function') problems.push('key must be a function of the arguments');
  if (typeof options.scope !== 'string' || options.scope === '') problems.push('scope is required');
  for (const name of ['ttlSeconds', 'inProgressTtl', 'pollIntervalMs'] as const) {
    const value = options[name];
    if (value !== undefined && !(Number.isFinite(value) && value > 0)) {
      problems.push(`${name} must be a positive number`);
    }
  }
  if (
    options.waitTimeoutMs !== undefined &&
    !(Number.isFinite(options.waitTimeoutMs) && options.waitTimeoutMs >= 0)
  ) {
    problems.push('waitTimeoutMs must be a non-negative number');
  }
  if (options.force !== undefined && typeof options.force !== 'function') {
    problems.push('force must be a function of the arguments');
  }
  if (problems.length > 0) throw new Error(`@Idempotent on ${where}: ${problems.join('; ')}`);
}
