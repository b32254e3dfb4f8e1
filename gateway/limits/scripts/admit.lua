-- Admit one request against every limit and budget that applies, in one round trip.
-- Scopes are the levels with a rate limit (tenant, key, project, end user: only those sent);
-- budgets are monthly or daily spend counters of any level.
-- KEYS: per scope i: 3i-2 rpm prefix, 3i-1 tpm prefix, 3i concurrency zset;
--       then per budget j: 3n+2j-1 spend, 3n+2j holds
-- ARGV: 1 now ('' = TIME), 2 request id, 3 tokens window ms, 4 horizon ms, 5 tokens,
--       6 reserved units, 7 n scopes, 8 m budgets,
--       per scope: rpm, tpm, concurrency (-1: no such limit);
--       per budget: threshold, ttl s
-- Reply: {verdict, hit, window, ms left, minute ms left, {used}, {spends}, {requests}}
-- A refusal writes nothing but the expiry of stale concurrency slots.
local rid = ARGV[2]
local window_ms = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local units = ARGV[6]
local n = tonumber(ARGV[7])
local m = tonumber(ARGV[8])
local window = math.floor(now / window_ms)
local ms_left = (window + 1) * window_ms - now
local minute = math.floor(now / 60000)
local minute_left = (minute + 1) * 60000 - now
local rpm, tpm, conc, used, requests = {}, {}, {}, {}, {}
for i = 1, n do
  rpm[i] = tonumber(ARGV[6 + 3 * i])
  tpm[i] = tonumber(ARGV[7 + 3 * i])
  conc[i] = tonumber(ARGV[8 + 3 * i])
  used[i] = 0
  requests[i] = 0
end
local thresholds, ttls, spends = {}, {}, {}
for j = 1, m do
  thresholds[j] = ARGV[7 + 3 * n + 2 * j]
  ttls[j] = tonumber(ARGV[8 + 3 * n + 2 * j])
end
local hit = {}
local function reply(verdict)
  return {verdict, hit, window, ms_left, minute_left, used, spends, requests}
end
for j = 1, m do
  spends[j] = redis.call('GET', KEYS[3 * n + 2 * j - 1])
  if not spends[j] then hit[#hit + 1] = j - 1 end
end
if #hit > 0 then return {'init', hit} end
for i = 1, n do
  if rpm[i] >= 0 then requests[i] = tonumber(redis.call('GET', KEYS[3 * i - 2] .. ':' .. fmt(minute)) or '0') end
  if tpm[i] >= 0 then used[i] = tonumber(redis.call('GET', KEYS[3 * i - 1] .. ':' .. fmt(window)) or '0') end
end
for i = 1, n do
  if rpm[i] >= 0 and requests[i] >= rpm[i] then hit[#hit + 1] = i - 1 end
end
if #hit > 0 then return reply('requests') end
for j = 1, m do
  local threshold = thresholds[j]
  -- spend and threshold may pass 2^53: compare them as canonical digit strings.
  local over
  if string.sub(threshold, 1, 1) == '-' then over = true
  elseif #spends[j] ~= #threshold then over = #spends[j] > #threshold
  else over = spends[j] > threshold end
  if over then hit[#hit + 1] = j - 1 end
end
if #hit > 0 then return reply('budget') end
for i = 1, n do
  if tpm[i] >= 0 and used[i] + tokens > tpm[i] then hit[#hit + 1] = i - 1 end
end
if #hit > 0 then return reply('tokens') end
for i = 1, n do
  if conc[i] >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', '(' .. fmt(now - horizon))
    if redis.call('ZCARD', KEYS[3 * i]) >= conc[i] then hit[#hit + 1] = i - 1 end
  end
end
if #hit > 0 then return reply('concurrency') end
for i = 1, n do
  if rpm[i] >= 0 then
    local key = KEYS[3 * i - 2] .. ':' .. fmt(minute)
    requests[i] = redis.call('INCR', key)
    redis.call('PEXPIRE', key, minute_left + 1000)
  end
  if tpm[i] >= 0 then
    local key = KEYS[3 * i - 1] .. ':' .. fmt(window)
    used[i] = redis.call('INCRBY', key, tokens)
    redis.call('PEXPIRE', key, ms_left + 1000)
  end
  if conc[i] >= 0 then
    redis.call('ZADD', KEYS[3 * i], now, rid)
    redis.call('PEXPIRE', KEYS[3 * i], horizon)
  end
end
for j = 1, m do
  local holds = KEYS[3 * n + 2 * j]
  redis.call('INCRBY', KEYS[3 * n + 2 * j - 1], units)
  redis.call('HSET', holds, rid, units .. ':' .. fmt(now))
  redis.call('EXPIRE', holds, ttls[j])
end
return reply('ok')
