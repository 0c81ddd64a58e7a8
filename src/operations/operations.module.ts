import { Module } from '@nestjs/common';
import { OperationsController } from './operations.controller';

/** Operators' endpoints: lock status and force-release. */
@Module({ controllers: [OperationsController] })
export class OperationsModule {}
