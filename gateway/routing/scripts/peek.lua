-- What ordering and the health list read, for each deployment: KEYS: state hash, in-flight zset
-- and failures zset, in threes. ARGV: now | horizon ms | each deployment's breaker window ms, in
-- its order (optional: without them, the failures zset is counted as is, stale entries included).
-- Returns, per deployment: in flight, latency EWMA ms ('' unknown), open until ms ('' closed),
-- failures (within the window when given); then, last, `now` (the clock the states were read on:
-- the health list's).
local horizon = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS, 3 do
  local window = tonumber(ARGV[3 + (i - 1) / 3])
  local state = redis.call('HMGET', KEYS[i], 'lat', 'until')
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 1], now - horizon, '+inf')
  out[#out + 1] = state[1] or ''
  out[#out + 1] = state[2] or ''
  if window then
    out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 2], '(' .. fmt(now - window), '+inf')
  else
    out[#out + 1] = redis.call('ZCARD', KEYS[i + 2])
  end
end
out[#out + 1] = fmt(now)
return out
