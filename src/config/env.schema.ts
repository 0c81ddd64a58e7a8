import { z } from 'zod';
import { MAX_REDIS_DB, redisUrlProblem } from '../redis/redis-url';

// 0 asks the OS for any free port (tests use it).
const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();
const nonNegativeInt = z.coerce.number().int().min(0);
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((value) => value === 'true' || value === '1' || value === 'yes');

// `host:port,host:port` (Sentinel or Cluster seed nodes).
const hostList = z
  .string()
  .regex(/^[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*$/, 'must be a comma-separated list of host:port')
  .transform((value) =>
    value.split(',').map((node) => {
      const at = node.lastIndexOf(':');
      return { host: node.slice(0, at), port: Number(node.slice(at + 1)) };
    }),
  );

const url = (protocols: string[]) =>
  z.string().refine(
    (value) => {
      try {
        return protocols.includes(new URL(value).protocol);
      } catch {
        return false;
      }
    },
    { message: `must be a URL with scheme ${protocols.map((p) => p.slice(0, -1)).join(' or ')}` },
  );

/**
 * Every environment variable the service reads, with its default. Names follow the seed where it
 * has one. Values are never echoed in error messages: some of them (URLs) carry secrets.
 */
export const envSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  HOST: z.string().min(1).default('0.0.0.0'),
  PORT: port.default(3000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  BODY_LIMIT_BYTES: positiveInt.default(16 * 1024 * 1024),
  SHUTDOWN_DELAY_MS: nonNegativeInt.default(0),
  SHUTDOWN_GRACE_MS: positiveInt.default(10_000),
  HEALTH_CHECK_TIMEOUT_MS: positiveInt.default(1_500),

  DATABASE_URL: url(['postgres:', 'postgresql:']),
  DATABASE_POOL_MAX: positiveInt.default(10),
  DATABASE_CONNECT_TIMEOUT_MS: positiveInt.default(5_000),
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: nonNegativeInt.default(15_000),
  MIGRATE_ON_START: bool.default(true),

  // name:scope:secret,… (scope read|write|admin); required in production. Never logged.
  API_KEYS: z.string().optional(),
  // Whether GET /metrics needs a read key like the API (default: open, for scrapers).
  METRICS_REQUIRE_AUTH: bool.default(false),

  // Requests per minute per API key on write routes and on admin routes (counted in Redis).
  RATE_LIMIT_WRITE_PER_MINUTE: positiveInt.default(600),
  RATE_LIMIT_ADMIN_PER_MINUTE: positiveInt.default(60),

  REDIS_MODE: z.enum(['standalone', 'sentinel', 'cluster']).default('standalone'),
  // redis[s]://[[user]:password@]host[:port][/db]; REDIS_PASSWORD and REDIS_DB override its parts.
  REDIS_URL: z.string().superRefine((value, ctx) => {
    const problem = redisUrlProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  REDIS_SENTINELS: hostList.optional(),
  REDIS_SENTINEL_NAME: z.string().min(1).default('mymaster'),
  REDIS_CLUSTER_NODES: hostList.optional(),
  REDIS_PASSWORD: z.string().min(1).optional(),
  REDIS_DB: nonNegativeInt.max(MAX_REDIS_DB).optional(),
  REDIS_CONNECT_TIMEOUT_MS: positiveInt.default(5_000),
  // Longest wait for any one Redis reply: a server that stops answering with its connection
  // still open costs a request this long, then a 503, instead of hanging it.
  REDIS_COMMAND_TIMEOUT_MS: positiveInt.default(1_500),

  LOCK_BACKEND: z.enum(['redis', 'memory']).default('redis'),
  LOCK_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_:.-]{1,64}$/, 'must be 1-64 letters, digits or _ : . -')
    .default('lock:'),
  LOCK_MAX_BACKOFF_MS: positiveInt.default(1_000),
  LOCK_FAIR_STALE_MS: positiveInt.default(2_000),
  DEFAULT_LOCK_TTL_MS: positiveInt.default(60_000),
  DEFAULT_WAIT_TIMEOUT_MS: nonNegativeInt.default(30_000),
  DEFAULT_BACKOFF_MS: positiveInt.default(100),

  IDEMPOTENCY_BACKEND: z.enum(['redis', 'memory']).default('redis'),
  // Largest stored idempotent outcome (bytes); larger ones are answered but not stored.
  IDEMPOTENCY_MAX_RESULT_BYTES: positiveInt.default(1024 * 1024),
  VECTOR_TABLES: z
    .string()
    .regex(
      /^[a-z][a-z0-9_]{0,39}(,[a-z][a-z0-9_]{0,39})*$/,
      'must be a comma-separated list of lower-case table names (a-z, 0-9, _)',
    )
    .default('questions,patterns')
    .transform((value) => [...new Set(value.split(','))]),
  EMBEDDING_PROVIDER: z.enum(['hash', 'openai']).default('hash'),
  EMBEDDING_DIMENSION: z.coerce.number().int().min(2).max(2000).default(384),
  EMBEDDING_MODEL: z.string().min(1).max(200).optional(),
  EMBEDDING_API_URL: url(['http:', 'https:']).optional(),
  EMBEDDING_API_KEY: z.string().min(1).optional(),
  EMBEDDING_BATCH_SIZE: z.coerce.number().int().min(1).max(2048).default(128),
  EMBEDDING_TIMEOUT_MS: positiveInt.default(30_000),
  EMBEDDING_MAX_RETRIES: nonNegativeInt.max(10).default(3),
  UPSERT_MAX_ITEMS: z.coerce.number().int().min(1).max(10_000).default(1_000),
  CONTENT_MAX_BYTES: positiveInt.default(32 * 1024),
  METADATA_MAX_BYTES: positiveInt.default(8 * 1024),
  IMPORT_MAX_LINES: z.coerce.number().int().min(1).max(100_000_000).default(1_000_000),
  SEARCH_EF_SEARCH: z.coerce.number().int().min(1).max(1000).default(100),
  SEARCH_MAX_SCAN_TUPLES: z.coerce.number().int().min(1).max(2_147_483_647).default(20_000),
  HNSW_M: z.coerce.number().int().min(2).max(100).default(16),
  HNSW_EF_CONSTRUCTION: z.coerce.number().int().min(4).max(1000).default(64),
  REBUILD_MAINTENANCE_WORK_MEM: z
    .string()
    .regex(/^\d+(kB|MB|GB)$/, 'must be a size such as 512MB or 1GB')
    .default('1GB'),
  DEFAULT_IDEM_TTL_SECONDS: positiveInt.default(3_600),
  DEFAULT_IN_PROGRESS_TTL: positiveInt.default(300),
  DEFAULT_IDEM_WAIT_TIMEOUT_MS: nonNegativeInt.default(5_000),
  DEFAULT_POLL_INTERVAL_MS: positiveInt.default(150),
});

export type Env = z.infer<typeof envSchema>;

/** Topology-specific variables that the schema alone cannot require. */
const refined = envSchema.superRefine((env, ctx) => {
  if (env.EMBEDDING_PROVIDER === 'openai') {
    for (const name of ['EMBEDDING_API_URL', 'EMBEDDING_MODEL'] as const) {
      if (!env[name]) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message: 'is required when EMBEDDING_PROVIDER=openai',
        });
      }
    }
  }
  if (env.REDIS_MODE === 'sentinel' && !env.REDIS_SENTINELS) {
    ctx.addIssue({
      code: 'custom',
      path: ['REDIS_SENTINELS'],
      message: 'is required when REDIS_MODE=sentinel',
    });
  }
});

export class ConfigValidationError extends Error {
  override readonly name = 'ConfigValidationError';
}

/**
 * Validates raw environment variables. Throws one single-line error naming every variable that
 * is missing or invalid, so a failed start-up says exactly what to fix.
 */
export function validateEnv(raw: Record<string, unknown>): Env {
  // An empty variable (`PORT=`) means "not set", as in most shells' and dotenv's eyes.
  const cleaned = Object.fromEntries(Object.entries(raw).filter(([, value]) => value !== ''));
  const result = refined.safeParse(cleaned);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const name = issue.path.join('.');
    const missing = issue.code === 'invalid_type' && cleaned[name] === undefined;
    return `${name} ${missing ? 'is required' : describeIssue(issue)}`;
  });
  throw new ConfigValidationError(`Invalid configuration: ${problems.join('; ')}`);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_value':
      return `must be one of ${issue.values.map(String).join(', ')}`;
    case 'too_small':
      return `must be at least ${String(issue.minimum)}`;
    case 'too_big':
      return `must be at most ${String(issue.maximum)}`;
    case 'invalid_type':
      return `must be ${issue.expected === 'int' ? 'an integer' : `a ${issue.expected}`}`;
    default:
      return issue.message;
  }
}
