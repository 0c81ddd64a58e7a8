import { Global, Module } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Registry } from 'prom-client';
import { Env } from '../config/env.schema';
import { MeteredEmbeddingProvider } from './embedding.metrics';
import { EmbeddingProvider } from './embedding.types';
import { HashEmbeddingProvider } from './hash.provider';
import { OpenAiEmbeddingProvider } from './openai.provider';

/** Injection token of the configured EmbeddingProvider. */
export const EMBEDDING_PROVIDER = Symbol('EMBEDDING_PROVIDER');

export function createEmbeddingProvider(config: ConfigService<Env, true>): EmbeddingProvider {
  const dimension = config.get('EMBEDDING_DIMENSION', { infer: true });
  if (config.get('EMBEDDING_PROVIDER', { infer: true }) === 'hash') {
    return new HashEmbeddingProvider(dimension);
  }
  return new OpenAiEmbeddingProvider({
    url: config.get('EMBEDDING_API_URL', { infer: true }),
    model: config.get('EMBEDDING_MODEL', { infer: true }),
    apiKey: config.get('EMBEDDING_API_KEY', { infer: true }),
    dimension,
    batchSize: config.get('EMBEDDING_BATCH_SIZE', { infer: true }),
    timeoutMs: config.get('EMBEDDING_TIMEOUT_MS', { infer: true }),
    maxRetries: config.get('EMBEDDING_MAX_RETRIES', { infer: true }),
  });
}

@Global()
@Module({
  providers: [
    {
      provide: EMBEDDING_PROVIDER,
      inject: [ConfigService, Registry],
      useFactory: (config: ConfigService<Env, true>, registry: Registry) =>
        new MeteredEmbeddingProvider(
          createEmbeddingProvider(config),
          config.get('EMBEDDING_PROVIDER', { infer: true }),
          registry,
        ),
    },
  ],
  exports: [EMBEDDING_PROVIDER],
})
export class EmbeddingModule {}
