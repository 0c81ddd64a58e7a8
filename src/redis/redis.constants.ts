import type { Cluster, Redis } from 'ioredis';

/** Injection token of the application's single ioredis client. */
export const REDIS_CLIENT = Symbol('REDIS_CLIENT');

/** A standalone/Sentinel client or a Cluster client: both speak the commands the service uses. */
export type RedisConnection = Redis | Cluster;
