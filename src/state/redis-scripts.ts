/**
 * The Lua scripts that make the Redis bus atomic across gateways (Redis runs one script at a time).
 * Holds (reservations, slots) are set members `<member>|<hold>|<what>`; a hold whose member key
 * (`<prefix>member:<id>`, refreshed while the gateway lives) has expired is a dead gateway's and is dropped.
 */

/** Shared: drops the holds of dead members from KEYS[1]; returns the live entries. */
const LIVE = `
local function live(key, memberPrefix)
  local out = {}
  for _, e in ipairs(redis.call('SMEMBERS', key)) do
    local bar = string.find(e, '|', 1, true)
    if redis.call('EXISTS', memberPrefix .. string.sub(e, 1, bar - 1)) == 0 then redis.call('SREM', key, e)
    else out[#out + 1] = e end
  end
  return out
end
`;

/**
 * Lockout.admit + reserve for one class of one account (lockout.ts), over every gateway.
 * KEYS: fail hash (`cls:fp` → t, expiring a window after the last failure), holds set.
 * ARGV: cls, fp, threshold, member prefix, me, hold id, hold ttl ms.
 * Returns {'account-locked'}, {'known', t} (this wrong password already counted: no bind),
 * {'wait'} (only attempts in flight stand in the way, or another gateway binds this very password), {'open'}.
 */
export const RESERVE = `${LIVE}
local cls, fp, threshold, me = ARGV[1] .. ':', ARGV[2], tonumber(ARGV[3]), ARGV[5]
local mine = cls .. fp
local settled, n = {}, 0
local f = redis.call('HGETALL', KEYS[1])
for i = 1, #f, 2 do
  if string.sub(f[i], 1, #cls) == cls then settled[f[i]] = f[i + 1]; n = n + 1 end
end
if n >= threshold then return {'account-locked'} end
if settled[mine] then return {'known', settled[mine]} end
local pending, m, theirs = {}, 0, false
for _, e in ipairs(live(KEYS[2], ARGV[4])) do
  local a = string.find(e, '|', 1, true)
  local b = string.find(e, '|', a + 1, true)
  local member, what = string.sub(e, 1, a - 1), string.sub(e, b + 1)
  if string.sub(what, 1, #cls) == cls and not settled[what] then
    if not pending[what] then pending[what] = true; m = m + 1 end
    if what == mine and member ~= me then theirs = true end
  end
end
if theirs or (not pending[mine] and n + m + 1 > threshold) then return {'wait'} end
redis.call('SADD', KEYS[2], me .. '|' .. ARGV[6] .. '|' .. mine)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return {'open'}
`;

/** A failed bind counted: KEYS fail hash; ARGV field (`cls:fp`), t, window ms (AD's observation window). */
export const FAIL = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
`;

/** One of at most ARGV[1] places: KEYS slot set; ARGV cap, member prefix, entry, ttl ms. 1 or 0. */
export const SLOT = `${LIVE}
if #live(KEYS[1], ARGV[2]) >= tonumber(ARGV[1]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`;

/**
 * A lockout event kept for gateways that start later, then told: KEYS kept zset (score = until);
 * ARGV channel, envelope, until, now, max kept. Expired and surplus events go; the key expires with the last.
 */
export const EMIT = `
if tonumber(ARGV[3]) > tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
  local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
  if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1) end
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(last[2])))
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
`;

/**
 * A session record merged as sessions.ts mergeSession does (ended is final, the later use counts), then
 * told: KEYS session hash {rec, seen, ended, until}; ARGV channel, envelope, record JSON, lastSeenAt, endedAt
 * ('' while it lives), until (the session's absolute limit: the key expires then).
 */
export const SESSION = `
redis.call('HSETNX', KEYS[1], 'rec', ARGV[3])
local seen = tonumber(redis.call('HGET', KEYS[1], 'seen') or '0')
if tonumber(ARGV[4]) > seen then redis.call('HSET', KEYS[1], 'seen', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSETNX', KEYS[1], 'ended', ARGV[5]) end
redis.call('HSET', KEYS[1], 'until', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[2])
`;
