/**
 * Lua scripts of RedisIdempotencyStore. Records are JSON (`status`, `owner`, …); owner checks
 * decode them server-side, so check and write are one atomic step. One key per script.
 */

/**
 * Become leader. KEYS[1] record. ARGV[1] in-progress record JSON, ARGV[2] lease ms,
 * ARGV[3] '1' to replace a completed record (force).
 * Returns {1} when this caller leads, else {0, current record JSON}.
 */
export const BEGIN = `
local current = redis.call('GET', KEYS[1])
if current and ARGV[3] == '1' and cjson.decode(current).status == 'done' then
  current = false
end
if current then return {0, current} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
`;

/**
 * Renew the leader's lease. KEYS[1] record. ARGV[1] owner, ARGV[2] lease ms.
 * Returns 1 if the record is still this owner's in-progress record, else 0.
 */
export const HEARTBEAT = `
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local record = cjson.decode(current)
if record.status ~= 'in_progress' or record.owner ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

/**
 * Store the result. KEYS[1] record. ARGV[1] owner, ARGV[2] completed record JSON, ARGV[3] ttl ms,
 * ARGV[4] notification channel. Returns 1 if written, 0 if this owner no longer leads.
 */
export const COMPLETE = `
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local record = cjson.decode(current)
if record.status ~= 'in_progress' or record.owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
`;

/**
 * Forget a completed result: what it answered about no longer holds. KEYS[1] record.
 * Returns 1 if a completed record was removed; an in-progress one is left alone (0).
 */
export const FORGET_RESULT = `
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if cjson.decode(current).status == 'in_progress' then return 0 end
redis.call('DEL', KEYS[1])
return 1
`;

/**
 * Give up leadership after a failed worker. KEYS[1] record. ARGV[1] owner, ARGV[2] channel.
 * Returns 1 if the record was removed, 0 if it was not this owner's in-progress record.
 */
export const ABANDON = `
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local record = cjson.decode(current)
if record.status ~= 'in_progress' or record.owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
`;
