-- Free whatever one request id still holds: its concurrency slots and its budget holds, the
-- held units given back to their counters. Idempotent; safe when nothing is held.
-- KEYS: 1 concurrency tenant, 2 concurrency key, 3 tenant spend, 4 tenant holds, 5 key spend, 6 key holds
-- ARGV: 1 now (unused: this script needs no time), 2 request id
local rid = ARGV[2]
local freed = 0
for i = 1, 2 do
  freed = freed + redis.call('ZREM', KEYS[i], rid)
  local spend, holds = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
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
