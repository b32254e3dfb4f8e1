-- What ordering and the health list read, for each deployment: KEYS: state hash and in-flight
-- zset, in pairs. ARGV: now | horizon ms. Returns, per deployment: in flight, latency EWMA ms
-- ('' unknown), open until ms ('' closed), failures in the window's zset (read as is).
local horizon = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS, 3 do
  local state = redis.call('HMGET', KEYS[i], 'lat', 'until')
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 1], now - horizon, '+inf')
  out[#out + 1] = state[1] or ''
  out[#out + 1] = state[2] or ''
  out[#out + 1] = redis.call('ZCARD', KEYS[i + 2])
end
return out
