import { Injectable, OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { InstanceWrapper } from '@nestjs/core/injector/instance-wrapper';
import { WITH_LOCK_METADATA } from './lock.constants';
import { LockService } from './lock.service';
import { WithLockMetadata } from './with-lock.decorator';

type Method = (...args: unknown[]) => unknown;

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
    // Routes are bound before onModuleInit, so a wrapped controller method would never run.
    for (const wrapper of this.discovery.getControllers()) {
      for (const [name] of this.decoratedMethods(wrapper)) {
        throw new Error(
          `@WithLock on controller method ${wrapper.name}.${name}: put it on a provider method`,
        );
      }
    }
    for (const wrapper of this.discovery.getProviders()) {
      const decorated = this.decoratedMethods(wrapper);
      if (decorated.length === 0) continue;
      if (!wrapper.isDependencyTreeStatic()) {
        throw new Error(
          `@WithLock on ${wrapper.name}.${decorated[0][0]}: request-scoped providers are not supported`,
        );
      }
      const instance = wrapper.instance as Record<string, Method>;
      for (const [name, options] of decorated) {
        this.wrap(instance, name, options, `${wrapper.name}.${name}`);
      }
    }
  }

  private decoratedMethods(wrapper: InstanceWrapper): [string, WithLockMetadata][] {
    const prototype = (wrapper.metatype as { prototype?: object } | null)?.prototype;
    if (!prototype || wrapper.isAlias) return [];
    const found: [string, WithLockMetadata][] = [];
    for (const name of this.scanner.getAllMethodNames(prototype)) {
      const method = (prototype as Record<string, Method>)[name];
      const options = this.reflector.get<WithLockMetadata | undefined>(WITH_LOCK_METADATA, method);
      if (options) found.push([name, options]);
    }
    return found;
  }

  private wrap(
    instance: Record<string, Method>,
    name: string,
    options: WithLockMetadata,
    where: string,
  ): void {
    validateOptions(options, where);
    const original = instance[name];
    const locks = this.locks;
    const lockOptions = {
      ttlMs: options.ttlMs,
      waitTimeoutMs: options.waitTimeoutMs,
      fair: options.fair,
      operation: options.operation ?? where,
    };
    const wrapped = function (this: unknown, ...args: unknown[]): Promise<unknown> {
      let key: string;
      try {
        key = options.key(...args);
      } catch (error) {
        return Promise.reject(error instanceof Error ? error : new Error(String(error)));
      }
      return locks.withLock(key, () => original.apply(this, args), lockOptions);
    };
    Object.defineProperty(wrapped, 'name', { value: name });
    instance[name] = wrapped;
  }
}

function validateOptions(options: WithLockMetadata, where: string): void {
  const problems: string[] = [];
  if (typeof options.key !== 'function') problems.push('key must be a function of the arguments');
  if (options.ttlMs !== undefined && !(Number.isInteger(options.ttlMs) && options.ttlMs > 0)) {
    problems.push('ttlMs must be a positive integer');
  }
  if (
    options.waitTimeoutMs !== undefined &&
    !(Number.isInteger(options.waitTimeoutMs) && options.waitTimeoutMs >= 0)
  ) {
    problems.push('waitTimeoutMs must be a non-negative integer');
  }
  if (problems.length > 0) throw new Error(`@WithLock on ${where}: ${problems.join('; ')}`);
}
