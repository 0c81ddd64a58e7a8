import { Cluster, Redis } from 'ioredis';

/**
 * A pub/sub connection cloned from `client`. Unlike the command client (which fails fast while
 * disconnected), it queues its SUBSCRIBE until connected and resubscribes after reconnecting.
 *
 * It has no command timeout: nobody waits on it (waiters poll meanwhile), and a SUBSCRIBE that
 * timed out would be reported failed although the server may still carry it out, leaving its
 * owner wrongly believing it is not subscribed. While the server does not answer, the SUBSCRIBE
 * stays pending and completes when it answers again (or is sent again after a reconnection).
 */
export function subscriberFor(client: Redis | Cluster): Redis | Cluster {
  const options = { enableOfflineQueue: true, lazyConnect: false, autoResubscribe: true };
  if (client instanceof Cluster) {
    return client.duplicate(undefined, {
      ...options,
      redisOptions: { ...client.options.redisOptions, commandTimeout: undefined },
    });
  }
  return client.duplicate({ ...options, commandTimeout: undefined });
}
