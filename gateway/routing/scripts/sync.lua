-- A process's view meets the shared state (store.py RoutingView.sync): this process's batched
-- reports on some deployments are applied, and their state as every process left it is read.
-- KEYS: per deployment its state hash, in-flight zset and failures zset, in threes.
-- ARGV: now | horizon ms | alpha | then per deployment, in the KEYS' order: window ms | adds |
-- removes | latencies | the adds as (member, age ms) pairs | the removed members | the latencies.
-- An add is an attempt of this process in flight for some time already: it is counted from its
-- start (now - age) and ages out after the horizon like any, so that a process that dies leaves
-- nothing counted for longer. Latencies go into the EWMA in the order they came.
-- Returns per deployment: in flight | latency EWMA ms ('' unknown) | open until ('' closed) |
-- probe since ('' none) | failures within the window | the newest of them ('' none); then, last,
-- `now` (the clock the states were read on).
local horizon, alpha = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local a = 4
for i = 1, #KEYS, 3 do
  local window = tonumber(ARGV[a])
  local adds, removes, latencies = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  if adds > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', now - horizon)
    for j = 0, adds - 1 do
      redis.call('ZADD', KEYS[i + 1], now - tonumber(ARGV[a + 2 * j + 1]), ARGV[a + 2 * j])
    end
    redis.call('PEXPIRE', KEYS[i + 1], horizon)
    a = a + 2 * adds
  end
  for j = 0, removes - 1 do redis.call('ZREM', KEYS[i + 1], ARGV[a + j]) end
  a = a + removes
  if latencies > 0 then
    local ewma = tonumber(redis.call('HGET', KEYS[i], 'lat'))
    for j = 0, latencies - 1 do
      local latency = tonumber(ARGV[a + j])
      if ewma then ewma = alpha * latency + (1 - alpha) * ewma else ewma = latency end
    end
    redis.call('HSET', KEYS[i], 'lat', string.format('%.3f', ewma))
    a = a + latencies
  end
  local state = redis.call('HMGET', KEYS[i], 'lat', 'until', 'probe')
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 1], now - horizon, '+inf')
  out[#out + 1] = state[1] or ''
  out[#out + 1] = state[2] or ''
  out[#out + 1] = state[3] or ''
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 2], '(' .. fmt(now - window), '+inf')
  local last = redis.call('ZRANGE', KEYS[i + 2], -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > now - window then out[#out + 1] = last[2] else out[#out + 1] = '' end
end
out[#out + 1] = fmt(now)
return out
