-- One attempt on a deployment: may it be tried (breaker, provider account quota), and if so
-- count it (quota, in flight). KEYS: state hash, quota hash, in-flight zset.
-- ARGV: now | cooldown ms | requests/min (-1: none) | tokens/min (-1: none) | tokens | member | horizon ms
-- Returns {verdict, ms}: ok | probe (this attempt decides a half-open breaker) | open | quota;
-- ms: until the breaker may let a probe through, or until the quota's minute ends.
local cooldown = tonumber(ARGV[2])
local rpm, tpm, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local horizon = tonumber(ARGV[7])
local probe = false
local state = redis.call('HMGET', KEYS[1], 'until', 'probe')
local open_until = tonumber(state[1])
if open_until then
  if now < open_until then return {'open', fmt(open_until - now)} end
  local probing = tonumber(state[2])
  if probing and now - probing < cooldown then return {'open', fmt(probing + cooldown - now)} end
  probe = true
end
if rpm >= 0 or tpm >= 0 then
  local minute = math.floor(now / 60000)
  local q = redis.call('HMGET', KEYS[2], 'm', 'r', 't')
  local requests, used = 0, 0
  if tonumber(q[1]) == minute then
    requests, used = tonumber(q[2]) or 0, tonumber(q[3]) or 0
  end
  if (rpm >= 0 and requests + 1 > rpm) or (tpm >= 0 and used > 0 and used + tokens > tpm) then
    return {'quota', fmt(60000 - now % 60000)}
  end
  redis.call('HSET', KEYS[2], 'm', fmt(minute), 'r', fmt(requests + 1), 't', fmt(used + tokens))
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if probe then redis.call('HSET', KEYS[1], 'probe', fmt(now)) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - horizon)
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('PEXPIRE', KEYS[3], horizon)
if probe then return {'probe', '0'} end
return {'ok', '0'}
