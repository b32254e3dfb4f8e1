-- Reset a month's spend counter to the database's total plus the holds of requests in flight.
-- KEYS: 1 spend, 2 holds. ARGV: 1 now ('' = TIME), 2 database total units, 3 horizon ms, 4 ttl s
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[4]))
local holds = redis.call('HGETALL', KEYS[2])
for i = 1, #holds, 2 do
  local units, started = string.match(holds[i + 1], '^(%d+):(%d+)$')
  if tonumber(started) < now - tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[2], holds[i])
  else
    redis.call('INCRBY', KEYS[1], units)
  end
end
return redis.call('GET', KEYS[1])
