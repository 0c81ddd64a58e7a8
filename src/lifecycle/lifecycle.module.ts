import { Global, Module } from '@nestjs/common';
import { ShutdownState } from './shutdown-state';

/** The instance's shutdown state, for health probes and for work that must stop on it. */
@Global()
@Module({ providers: [ShutdownState], exports: [ShutdownState] })
export class LifecycleModule {}
