-- Free whatever one request id still holds: its concurrency slots and its budget holds, the
-- held units given back to their counters. Idempotent; safe when nothing is held.
-- KEYS: n concurrency zsets, then pairs (spend, holds)
-- ARGV: 1 now (unused: this script needs no time), 2 request id, 3 n
local rid = ARGV[2]
local n = tonumber(ARGV[3])
local freed = 0
for i = 1, n do
  freed = freed + redis.call('ZREM', KEYS[i], rid)
end
for j = n + 1, #KEYS - 1, 2 do
  local spend, holds = KEYS[j], KEYS[j + 1]
  local held = redis.call('HGET', holds, rid)
  if held then
    redis.call('HDEL', holds, rid)
    freed = freed + 1
    if redis.call('EXISTS', spend) == 1 then
      if redis.call('DECRBY', spend, string.match(held, '^%d+')) < 0 then redis.call('SET', spend, '0', 'KEEPTTL') end
    end
  end
end
return freed
