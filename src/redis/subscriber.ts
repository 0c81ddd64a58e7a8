import { Cluster, Redis } from 'ioredis';

/**
 * A pub/sub connection cloned from `client`. Unlike the command client (which fails fast while
 * disconnected), it queues its SUBSCRIBE until connected and resubscribes after reconnecting.
 */
export function subscriberFor(client: Redis | Cluster): Redis | Cluster {
  const options = { enableOfflineQueue: true, lazyConnect: false, autoResubscribe: true };
  return client instanceof Cluster
    ? client.duplicate(undefined, options)
    : client.duplicate(options);
}
