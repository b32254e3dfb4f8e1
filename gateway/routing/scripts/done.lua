-- How an attempt went that must be told at once (store.py RoutingView: a counted failure, a
-- probe's answer), and (unless a stream goes on) its end. KEYS: state hash, failures zset,
-- in-flight zset. ARGV: now | member | result (ok | fail | neutral | none) | probe (1/0) |
-- latency ms | alpha | failures | window ms | cooldown ms | release (1/0) | channel | deployment id
-- Returns {state, open until ('' closed), newest failure within the window ('' none)}, the state
-- after it: closed | open. An opening, and a closing by a probe, is published on the channel
-- ("<id> <until>", "<id>") so that every process's view learns it at once.
local result, probe = ARGV[3], ARGV[4] == '1'
local window, cooldown = tonumber(ARGV[8]), tonumber(ARGV[9])
if ARGV[10] == '1' then redis.call('ZREM', KEYS[3], ARGV[2]) end
local function open()
  local open_until = fmt(now + cooldown)
  redis.call('HSET', KEYS[1], 'until', open_until)
  redis.call('HDEL', KEYS[1], 'probe')
  redis.call('DEL', KEYS[2])
  redis.call('PUBLISH', ARGV[11], ARGV[12] .. ' ' .. open_until)
  return {'open', open_until, ''}
end
if result == 'ok' or result == 'neutral' then
  if probe then
    if redis.call('HDEL', KEYS[1], 'until', 'probe') > 0 then redis.call('PUBLISH', ARGV[11], ARGV[12]) end
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
  local open_until = redis.call('HGET', KEYS[1], 'until')
  if open_until then return {'open', open_until, ''} end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], window)
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then return open() end
end
local open_until = redis.call('HGET', KEYS[1], 'until')
if open_until then return {'open', open_until, ''} end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) > now - window then return {'closed', '', last[2]} end
return {'closed', '', ''}
