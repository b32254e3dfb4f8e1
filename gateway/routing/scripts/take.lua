-- One attempt on a deployment that the process's view cannot decide alone (store.py RoutingView:
-- an account quota, a breaker not known to be closed, a failure known within the window): may it
-- be tried (breaker, provider account quota), and if so count it on the quota. Its attempt in
-- flight is counted by the view (batched, sync.lua). KEYS: state hash, quota hash, failures zset.
-- ARGV: now | cooldown ms | requests/min (-1: none) | tokens/min (-1: none) | tokens | window ms
-- Returns {verdict, ms, newest failure}: ok | probe (this attempt decides a half-open breaker) |
-- open | quota; ms: until the breaker may let a probe through, or until the quota's minute ends;
-- the newest failure's time within the window ('' none).
local cooldown = tonumber(ARGV[2])
local rpm, tpm, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local function newest()
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > now - window then return last[2] end
  return ''
end
local probe = false
local state = redis.call('HMGET', KEYS[1], 'until', 'probe')
local open_until = tonumber(state[1])
if open_until then
  if now < open_until then return {'open', fmt(open_until - now), ''} end
  local probing = tonumber(state[2])
  if probing and now - probing < cooldown then return {'open', fmt(probing + cooldown - now), ''} end
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
    return {'quota', fmt(60000 - now % 60000), newest()}
  end
  redis.call('HSET', KEYS[2], 'm', fmt(minute), 'r', fmt(requests + 1), 't', fmt(used + tokens))
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if probe then
  redis.call('HSET', KEYS[1], 'probe', fmt(now))
  return {'probe', '0', newest()}
end
return {'ok', '0', newest()}
