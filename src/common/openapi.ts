import { ModulesContainer, Reflector } from '@nestjs/core';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { DocumentBuilder, OpenAPIObject, SwaggerModule } from '@nestjs/swagger';
import { REQUIRED_SCOPE } from '../auth/auth.decorators';

export const DOCS_PATH = 'api/docs';
export const DOCS_JSON_PATH = 'api/docs-json';

export function buildOpenApiDocument(app: NestFastifyApplication): OpenAPIObject {
  const config = new DocumentBuilder()
    .setTitle('vector-service')
    .setDescription(
      'Vector management: namespaces and slots in Postgres + pgvector, distributed locks and idempotency in Redis. Errors are RFC 9457 problem details (application/problem+json).',
    )
    .setVersion('1')
    .addBearerAuth(
      { type: 'http', scheme: 'bearer', description: 'An API key from API_KEYS' },
      'bearer',
    )
    .addApiKey({ type: 'apiKey', in: 'header', name: 'X-API-Key' }, 'api-key')
    .build();
  const document = SwaggerModule.createDocument(app, config);
  const schemas = (document.components?.schemas ?? {}) as Record<string, SchemaNode>;
  for (const schema of Object.values(schemas)) describeAsValidated(schema, schemas);
  describeScopes(document, scopesByOperationId(app));
  return document;
}

type RouteScope = 'public' | 'read' | 'write' | 'admin';

/**
 * The scope each route needs, read from the same @RequireScope metadata the guard reads
 * (default `read`), keyed by the document's operation ids (`Controller_method`).
 */
function scopesByOperationId(app: NestFastifyApplication): Map<string, RouteScope> {
  const reflector = new Reflector();
  const scopes = new Map<string, RouteScope>();
  for (const module of app.get(ModulesContainer).values()) {
    for (const wrapper of module.controllers.values()) {
      const controller = wrapper.metatype as (new (...args: never[]) => unknown) | null;
      if (!controller?.prototype) continue;
      const prototype = controller.prototype as Record<string, unknown>;
      for (const name of Object.getOwnPropertyNames(prototype)) {
        const handler = prototype[name];
        if (name === 'constructor' || typeof handler !== 'function') continue;
        const scope =
          reflector.getAllAndOverride<RouteScope | undefined>(REQUIRED_SCOPE, [
            handler as () => unknown,
            controller,
          ]) ?? 'read';
        scopes.set(`${controller.name}_${name}`, scope);
      }
    }
  }
  return scopes;
}

const SCOPE_TEXT: Record<RouteScope, string> = {
  public: 'Open: no API key needed.',
  read: 'API key scope: read (or write, admin).',
  write: 'API key scope: write (or admin). Rate-limited per key (429).',
  admin: 'API key scope: admin. Rate-limited per key (429).',
};

/**
 * Each operation names its scope (`x-required-scope`, and a line of its description); the
 * rate-limited ones (write and admin, see RateLimitGuard) document their 429.
 */
function describeScopes(document: OpenAPIObject, scopes: Map<string, RouteScope>): void {
  for (const path of Object.values(document.paths)) {
    for (const operation of [path.get, path.put, path.post, path.delete, path.patch]) {
      const scope = operation?.operationId ? scopes.get(operation.operationId) : undefined;
      if (!operation || !scope) continue;
      (operation as unknown as Record<string, unknown>)['x-required-scope'] = scope;
      operation.description = [operation.description, SCOPE_TEXT[scope]]
        .filter(Boolean)
        .join('\n\n');
      if ((scope === 'write' || scope === 'admin') && !operation.responses['429']) {
        operation.responses['429'] = {
          description: 'Rate limit of the API key exceeded (Retry-After)',
          headers: {
            'Retry-After': {
              description: 'Seconds to wait before retrying',
              schema: { type: 'integer' },
            },
          },
          content: {
            'application/problem+json': {
              schema: { $ref: '#/components/schemas/ProblemDetailsDto' },
            },
          },
        };
      }
    }
  }
}

interface SchemaNode {
  $ref?: string;
  type?: string;
  nullable?: boolean;
  default?: unknown;
  allOf?: SchemaNode[];
  required?: string[];
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  [keyword: string]: unknown;
}

const SCHEMA_REF = '#/components/schemas/';

/**
 * Two things the generated schemas say otherwise than the service behaves, fixed here for every
 * DTO, present and future (the Stoplight Prism contract test finds them):
 * - A property with a default is optional: the validation pipe fills it in. The Nest CLI plugin
 *   marks every property declared without `?` as required, defaults included.
 * - A nullable object property is generated as `{nullable: true, allOf: [{$ref}]}`, which admits
 *   no null under OpenAPI 3.0: `nullable` only widens a `type` beside it, and the referenced
 *   schema still demands an object. The reference is inlined next to `type: object, nullable`,
 *   which every 3.0 validator reads alike.
 */
function describeAsValidated(schema: SchemaNode, schemas: Record<string, SchemaNode>): void {
  const properties = schema.properties;
  if (properties) {
    if (schema.required) {
      const required = schema.required.filter((name) => properties[name]?.default === undefined);
      if (required.length > 0) schema.required = required;
      else delete schema.required;
    }
    for (const [name, property] of Object.entries(properties)) {
      properties[name] = inlineNullableReference(property, schemas);
      describeAsValidated(properties[name], schemas);
    }
  }
  if (schema.items) describeAsValidated(schema.items, schemas);
}

function inlineNullableReference(
  property: SchemaNode,
  schemas: Record<string, SchemaNode>,
): SchemaNode {
  const reference = property.allOf?.length === 1 ? property.allOf[0].$ref : undefined;
  if (!property.nullable || !reference?.startsWith(SCHEMA_REF)) return property;
  const target = schemas[reference.slice(SCHEMA_REF.length)];
  if (!target) return property;
  const inlined: SchemaNode = { ...structuredClone(target), ...property };
  delete inlined.allOf;
  return { ...inlined, type: 'object', nullable: true };
}

/** Swagger UI at /api/docs and the JSON document at /api/docs-json (both open). */
export function serveOpenApi(app: NestFastifyApplication): void {
  SwaggerModule.setup(DOCS_PATH, app, () => buildOpenApiDocument(app), {
    jsonDocumentUrl: DOCS_JSON_PATH,
    useGlobalPrefix: false,
  });
}
