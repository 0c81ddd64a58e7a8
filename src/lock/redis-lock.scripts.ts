/**
 * Lua scripts of RedisLockBackend. Each runs atomically on the server; every key one script
 * touches shares a hash tag with its lock key (see siblingKey), so they work on Redis Cluster.
 * Lock values are `<token>:<holder JSON>`, with a trailing `!` once a waiter has asked for a
 * wake-up; ownership is a prefix match on `<token>:`.
 */

/**
 * Takes N locks, all or none, and bumps each one's fence. A caller that will wait marks the
 * value of the lock that stopped it (a trailing `!`), so that its release announces itself:
 * an uncontended release publishes nothing, and nobody has to keep a count of waiters.
 * Run again with the same token (a client resending after a lost reply), it finds the locks
 * already ours and answers as the first run did, with the fences that run issued: nothing
 * changes a held lock's fence counter but a force-release, which also removes the lock.
 * KEYS[1..N] lock keys, KEYS[N+1..2N] fence counters.
 * ARGV[1] lock value, ARGV[2] ttl in ms, ARGV[3] '1' if the caller will wait, else '0'.
 * Returns {1, fence1, ..., fenceN} when taken, else {0, pttl of the first taken key}; for one
 * key a bare integer, which the client decodes without building arrays: the fence (>= 1) when
 * taken, else -3 - pttl (<= -1, as pttl >= -2).
 */
export const ACQUIRE = `
local n = #KEYS / 2
local taken = nil
if n == 1 then
  -- The common case in one command: SET NX both tests and takes.
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then taken = 1 end
else
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 1 then taken = i break end
  end
end
if taken then
  local value = redis.call('GET', KEYS[taken])
  -- The lock value starts with '<token>:'.
  local owner = string.sub(ARGV[1], 1, string.find(ARGV[1], ':', 1, true))
  if string.sub(value, 1, #owner) == owner then
    local result = {1}
    for i = 1, n do
      local held = redis.call('GET', KEYS[i])
      -- Some of them only (one expired and was taken by another): taken, as for anyone.
      if not held or string.sub(held, 1, #owner) ~= owner then result = nil break end
      result[i + 1] = tonumber(redis.call('GET', KEYS[n + i]))
    end
    if result then
      if n == 1 then return result[2] end
      return result
    end
  end
  -- 33 is '!': marked once, however often waiters are turned away.
  if ARGV[3] == '1' and string.byte(value, -1) ~= 33 then
    redis.call('APPEND', KEYS[taken], '!')
  end
  local ttl = redis.call('PTTL', KEYS[taken])
  if n == 1 then return -3 - ttl end
  return {0, ttl}
end
local result = {1}
for i = 1, n do
  if n > 1 then redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
  result[i + 1] = redis.call('INCR', KEYS[n + i])
end
if n == 1 then return result[2] end
return result
`;

/**
 * Fair acquire of one lock through a ticket queue (a sorted set scored by arrival ticket).
 * KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue (zset token -> ticket),
 * KEYS[4] last-seen times (hash token -> ms), KEYS[5] ticket counter.
 * ARGV[1] lock value, ARGV[2] ttl in ms, ARGV[3] waiter token, ARGV[4] stale-after ms.
 * A waiter turned away marks the holder's value, as in ACQUIRE; a waiter that takes the lock
 * with others still queued marks its own, so its release wakes them. Run again after taking
 * the lock (a resent request), it answers as the first run did, as ACQUIRE does.
 * Returns {1, fence} when taken, else {0, pttl of the holder (-2 if none)}.
 */
export const ACQUIRE_FAIR = `
local token, stale = ARGV[3], tonumber(ARGV[4])
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #token + 1) == token .. ':' then
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
local function turned_away()
  local value = redis.call('GET', KEYS[1])
  if value and string.byte(value, -1) ~= 33 then redis.call('APPEND', KEYS[1], '!') end
  return {0, redis.call('PTTL', KEYS[1])}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if not redis.call('ZSCORE', KEYS[3], token) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), token)
end
redis.call('HSET', KEYS[4], token, now)
local keep = math.max(60000, stale * 4)
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
redis.call('PEXPIRE', KEYS[5], keep)
while true do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head == token then break end
  local seen = tonumber(redis.call('HGET', KEYS[4], head) or '0')
  if now - seen <= stale then return turned_away() end
  redis.call('ZREM', KEYS[3], head)
  redis.call('HDEL', KEYS[4], head)
end
if redis.call('EXISTS', KEYS[1]) == 1 then return turned_away() end
redis.call('ZREM', KEYS[3], token)
redis.call('HDEL', KEYS[4], token)
local value = ARGV[1]
if redis.call('ZCARD', KEYS[3]) > 0 then value = value .. '!' end
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, redis.call('INCR', KEYS[2])}
`;

/**
 * Leaves the fair queue.
 * KEYS[1] queue, KEYS[2] last-seen hash. ARGV[1] waiter token.
 */
export const LEAVE_QUEUE = `
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
`;

/**
 * Compare-and-pexpire of every lock held by the owner; all or none.
 * KEYS[1..N] lock keys. ARGV[1] `<token>:`, ARGV[2] ttl in ms.
 * Returns 1 when every key was ours and is extended, else 0 (nothing changed).
 */
export const EXTEND = `
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if not value or string.sub(value, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 1
`;

/**
 * Compare-and-delete of the locks still held by the owner, announcing each one a waiter has
 * marked (see ACQUIRE).
 * KEYS[1..N] lock keys. ARGV[1] `<token>:`, ARGV[2] release channel.
 * Returns the number of keys removed.
 */
export const RELEASE = `
local released = 0
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    released = released + 1
    -- 33 is '!', the waiters' mark.
    if string.byte(value, -1) == 33 then redis.call('PUBLISH', ARGV[2], KEYS[i]) end
  end
end
return released
`;

/**
 * Removes the lock of the holder with the given fence (the one the operator saw) and bumps the
 * fence, so that holder's fenced writes fail. A holder's fence is the key's fence counter
 * (only taking the lock bumps it, and a force-release, which removes the lock). Each removal is
 * remembered for a while: run again for the same fence (a resent script, a repeated request),
 * it answers as the first run did and removes nobody, not even the holder that came next.
 * KEYS[1] lock key, KEYS[2] fence counter, KEYS[3] last removal (`<fence>:<removed value>`).
 * ARGV[1] release channel ('' for none), ARGV[2] the holder's fence, ARGV[3] how long the
 * removal is remembered, in ms.
 * Returns {removed value, fence after the bump, 0} when removed; {false, fence, 0} when nobody
 * holds the lock; {current holder's value, its fence, 1} when someone else holds it.
 */
export const FORCE_RELEASE = `
local expected = tonumber(ARGV[2])
local removed = redis.call('GET', KEYS[3])
if removed then
  local separator = string.find(removed, ':', 1, true)
  if tonumber(string.sub(removed, 1, separator - 1)) == expected then
    return {string.sub(removed, separator + 1), expected + 1, 0}
  end
end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local value = redis.call('GET', KEYS[1])
if not value then return {false, fence, 0} end
if fence ~= expected then return {value, fence, 1} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], expected .. ':' .. value, 'PX', ARGV[3])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], KEYS[1]) end
return {value, redis.call('INCR', KEYS[2]), 0}
`;

/**
 * Raises the fence of a lock its owner still holds, above a fence recorded elsewhere (Postgres):
 * after a restart without persistence or a failover, the counter can be behind what was written.
 * KEYS[1] lock key, KEYS[2] fence counter. ARGV[1] `<token>:`, ARGV[2] the fence to pass.
 * Returns the new fence (> ARGV[2]), or 0 when the lock is not held by the token.
 */
export const RAISE_FENCE = `
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
return redis.call('INCR', KEYS[2])
`;
