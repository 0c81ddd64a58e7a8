import { NestFastifyApplication } from '@nestjs/platform-fastify';
import supertest from 'supertest';
import { createApp } from '../../src/app.factory';
import { applyTestEnv, testEnv } from '../support/env';
import { ServiceProcess } from '../support/service-process';
import { freePort } from '../support/ports';
import { waitFor } from '../support/wait';

interface OpenApiDocument {
  paths: Record<
    string,
    Record<string, { security?: unknown[]; responses: Record<string, unknown> }>
  >;
  components: {
    securitySchemes: Record<string, unknown>;
    schemas: Record<string, { properties?: Record<string, unknown> }>;
  };
}

describe('OpenAPI document', () => {
  let app: NestFastifyApplication;
  const routes: { method: string; url: string }[] = [];

  beforeAll(async () => {
    applyTestEnv();
    app = await createApp();
    app
      .getHttpAdapter()
      .getInstance()
      .addHook('onRoute', (route) => {
        for (const method of [route.method].flat()) routes.push({ method, url: route.url });
      });
    await app.init();
    await app.getHttpAdapter().getInstance().ready();
  });

  afterAll(async () => {
    await app.close();
  });

  it('lists every route the app registers, with auth schemes and problem responses', async () => {
    const response = await supertest(app.getHttpServer()).get('/api/docs-json').expect(200);
    const document = response.body as OpenApiDocument;
    const apiRoutes = routes.filter(
      ({ method, url }) => method !== 'HEAD' && !url.startsWith('/api/docs'),
    );
    // Both ways: every registered route is documented, and nothing else is.
    const documented = Object.values(document.paths).flatMap((operations) =>
      Object.keys(operations),
    );
    expect(apiRoutes.length).toBe(documented.length);
    for (const { method, url } of apiRoutes) {
      const path = url.replace(/:([A-Za-z_]+)/g, '{$1}');
      expect([method, path, document.paths[path]?.[method.toLowerCase()] !== undefined]).toEqual([
        method,
        path,
        true,
      ]);
    }
    expect(Object.keys(document.components.securitySchemes).sort()).toEqual(['api-key', 'bearer']);
    const upsert = document.paths['/api/v1/vector/batch-upsert'].post;
    expect(upsert.security).toEqual(expect.arrayContaining([{ bearer: [] }, { 'api-key': [] }]));
    for (const status of ['200', '400', '401', '403', '409', '422', '503']) {
      expect(Object.keys(upsert.responses)).toContain(status);
    }
    expect(document.components.schemas.ProblemDetailsDto.properties).toHaveProperty('errors');
  });

  it('serves the Swagger UI', async () => {
    const response = await supertest(app.getHttpServer()).get('/api/docs').redirects(1);
    expect(response.status).toBe(200);
    expect(response.text).toContain('swagger');
  });
});

describe('OpenAPI document of the built service', () => {
  it('describes the request DTOs field by field (Nest CLI plugin)', async () => {
    const port = await freePort();
    const service = ServiceProcess.start('main.js', testEnv({ PORT: String(port) }));
    try {
      const document = await waitFor(async () => {
        const response = await fetch(`http://127.0.0.1:${port}/api/docs-json`);
        return response.ok ? ((await response.json()) as OpenApiDocument) : undefined;
      });
      const upsert = document.components.schemas.BatchUpsertDto.properties ?? {};
      expect(Object.keys(upsert).sort()).toEqual(['items', 'namespace', 'table_name']);
      expect(
        Object.keys(document.components.schemas.UpsertItemDto.properties ?? {}).sort(),
      ).toEqual(['content', 'embedding', 'id', 'metadata', 'obj_ref']);
      expect(document.components.schemas.SearchResponseDto.properties).toHaveProperty('results');
    } finally {
      service.kill('SIGTERM');
      await service.exited;
    }
  });
});
