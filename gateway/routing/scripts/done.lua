-- How an attempt went, and (unless a stream goes on) its end. KEYS: state hash, failures zset,
-- in-flight zset. ARGV: now | member | result (ok | fail | neutral | none) | probe (1/0) |
-- latency ms | alpha | failures | window ms | cooldown ms | release (1/0)
-- Returns the breaker's state after it: closed | open.
local result, probe = ARGV[3], ARGV[4] == '1'
local cooldown = tonumber(ARGV[9])
if ARGV[10] == '1' then redis.call('ZREM', KEYS[3], ARGV[2]) end
local function open()
  redis.call('HSET', KEYS[1], 'until', fmt(now + cooldown))
  redis.call('HDEL', KEYS[1], 'probe')
  redis.call('DEL', KEYS[2])
  return {'open'}
end
if result == 'ok' or result == 'neutral' then
  if probe then
    redis.call('HDEL', KEYS[1], 'until', 'probe')
    redis.call('DEL', KEYS[2])
  end
  if result == 'ok' then
    local latency, alpha = tonumber(ARGV[5]), tonumber(ARGV[6])
    local before = tonumber(redis.call('HGET', KEYS[1], 'lat'))
    local ewma = latency
    if before then ewma = alpha * latency + (1 - alpha) * before end
    redis.call('HSET', KEYS[1], 'lat', string.format('%.3f', ewma))
  end
elseif result == 'fail' then
  if probe then return open() end
  if redis.call('HEXISTS', KEYS[1], 'until') == 1 then return {'open'} end
  local window = tonumber(ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], window)
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then return open() end
end
if redis.call('HEXISTS', KEYS[1], 'until') == 1 then return {'open'} end
return {'closed'}
