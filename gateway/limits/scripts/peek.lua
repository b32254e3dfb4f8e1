-- Read, never write: a tenant's live counters for the staff admin.
-- KEYS: 1 tpm tenant prefix, 2 concurrency tenant, 3 tenant spend, 4 rpm tenant prefix
-- ARGV: 1 now ('' = TIME), 2 tokens window ms, 3 horizon ms
-- Reply: {tokens this window, in flight, spend ('' = no counter), requests this minute}
local window = math.floor(now / tonumber(ARGV[2]))
local minute = math.floor(now / 60000)
return {
  tonumber(redis.call('GET', KEYS[1] .. ':' .. fmt(window)) or '0'),
  redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[3]), '+inf'),
  redis.call('GET', KEYS[3]) or '',
  tonumber(redis.call('GET', KEYS[4] .. ':' .. fmt(minute)) or '0'),
}
