/** Injection token of the application's single ioredis client. */
export const REDIS_CLIENT = Symbol('REDIS_CLIENT');
