import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { InstanceWrapper } from '@nestjs/core/injector/instance-wrapper';

export type Method = (...args: unknown[]) => unknown;

export interface DecoratedMethod<T> {
  instance: Record<string, Method>;
  name: string;
  options: T;
  /** `Class.method`, for messages and metrics. */
  where: string;
}

/**
 * Finds provider methods carrying a metadata-only decorator, for an explorer to wrap at
 * start-up (as @nestjs/schedule does). Refuses what wrapping cannot serve: controller methods
 * (routes are bound before onModuleInit, so a wrapper would never run) and request-scoped
 * providers (no single instance to wrap).
 */
export function findDecoratedMethods<T>(
  discovery: DiscoveryService,
  scanner: MetadataScanner,
  reflector: Reflector,
  metadataKey: string,
  decoratorName: string,
): DecoratedMethod<T>[] {
  const decorated = (wrapper: InstanceWrapper): [string, T][] => {
    const prototype = (wrapper.metatype as { prototype?: object } | null)?.prototype;
    if (!prototype || wrapper.isAlias) return [];
    const found: [string, T][] = [];
    for (const name of scanner.getAllMethodNames(prototype)) {
      const options = reflector.get<T | undefined>(
        metadataKey,
        (prototype as Record<string, Method>)[name],
      );
      if (options) found.push([name, options]);
    }
    return found;
  };
  for (const wrapper of discovery.getControllers()) {
    const [first] = decorated(wrapper);
    if (first) {
      throw new Error(
        `${decoratorName} on controller method ${wrapper.name}.${first[0]}: put it on a provider method`,
      );
    }
  }
  const methods: DecoratedMethod<T>[] = [];
  for (const wrapper of discovery.getProviders()) {
    const found = decorated(wrapper);
    if (found.length === 0) continue;
    if (!wrapper.isDependencyTreeStatic()) {
      throw new Error(
        `${decoratorName} on ${wrapper.name}.${found[0][0]}: request-scoped providers are not supported`,
      );
    }
    for (const [name, options] of found) {
      methods.push({
        instance: wrapper.instance as Record<string, Method>,
        name,
        options,
        where: `${wrapper.name}.${name}`,
      });
    }
  }
  return methods;
}

/**
 * Replaces `instance[name]` with `wrapper(run, args)`, where `run()` calls the original method
 * with the caller's `this` and arguments.
 */
export function replaceMethod(
  instance: Record<string, Method>,
  name: string,
  wrapper: (run: () => unknown, args: unknown[]) => Promise<unknown>,
): void {
  const original = instance[name];
  const wrapped = function (this: unknown, ...args: unknown[]): Promise<unknown> {
    return wrapper(() => original.apply(this, args), args);
  };
  Object.defineProperty(wrapped, 'name', { value: name });
  instance[name] = wrapped;
}

/** Calls a user-supplied key builder, turning a throw into a rejected promise's error. */
export function buildKey(build: (...args: never[]) => string, args: unknown[]): string {
  const key = (build as (...args: unknown[]) => unknown)(...args);
  if (typeof key !== 'string') throw new TypeError('the key function must return a string');
  return key;
}
