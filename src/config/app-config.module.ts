import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { Env, validateEnv } from './env.schema';

/** Typed access to the validated environment: `config.get('PORT', { infer: true })`. */
export type AppConfigService = ConfigService<Env, true>;

@Module({})
export class AppConfigModule {
  /** Loads `.env` (if present) under the real environment and validates both, failing fast. */
  static forRoot(): DynamicModule {
    return {
      module: AppConfigModule,
      imports: [
        ConfigModule.forRoot({
          isGlobal: true,
          cache: true,
          validate: validateEnv,
          expandVariables: false,
        }),
      ],
    };
  }
}
