import { Type } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import supertest from 'supertest';
import { createApp } from '../../src/app.factory';
import { applyTestEnv } from './env';

export interface TestApp {
  app: NestFastifyApplication;
  http: ReturnType<typeof supertest>;
  close(): Promise<void>;
}

/** The production app (same factory, pipes and filters) on the test services, not listening. */
export async function startTestApp(
  env: Record<string, string> = {},
  extraModules: Type[] = [],
): Promise<TestApp> {
  applyTestEnv(env);
  const app = await createApp({ extraModules });
  await app.init();
  await app.getHttpAdapter().getInstance().ready();
  return { app, http: supertest(app.getHttpServer()), close: () => app.close() };
}
