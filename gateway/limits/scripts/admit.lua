-- Admit one request against every limit and budget that applies, in one round trip.
-- KEYS: 1 tenant spend, 2 tenant holds, 3 tpm tenant prefix, 4 tpm key prefix,
--       5 concurrency tenant, 6 concurrency key, 7 key spend, 8 key holds,
--       9 rpm tenant prefix, 10 rpm key prefix
-- ARGV: 1 now ('' = TIME), 2 request id, 3 tokens window ms, 4 horizon ms, 5 tokens,
--       6 tpm tenant, 7 tpm key, 8 conc tenant, 9 conc key (-1: no such limit),
--       10 tenant budget threshold ('' = no budget), 11 reserved units, 12 spend ttl s,
--       13 key budget threshold ('' = no budget), 14 rpm tenant, 15 rpm key (-1: none)
-- Reply: {verdict, scopes, window, ms left, tokens used t, k, spend t, k, requests t, k, requests ms left}
-- A refusal writes nothing but the expiry of stale concurrency slots.
local rid = ARGV[2]
local window_ms = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local window = math.floor(now / window_ms)
local ms_left = (window + 1) * window_ms - now
local minute = math.floor(now / 60000)
local minute_left = (minute + 1) * 60000 - now
local rpm = {tonumber(ARGV[14]), tonumber(ARGV[15])}
local tpm = {tonumber(ARGV[6]), tonumber(ARGV[7])}
local conc = {tonumber(ARGV[8]), tonumber(ARGV[9])}
local thresholds = {ARGV[10], ARGV[13]}
local spend_keys = {KEYS[1], KEYS[7]}
local hold_keys = {KEYS[2], KEYS[8]}
local spends = {'', ''}
local used = {0, 0}
local requests = {0, 0}
local hit = ''
local function reply(verdict)
  return {verdict, hit, window, ms_left, used[1], used[2], spends[1], spends[2], requests[1], requests[2], minute_left}
end
for i = 1, 2 do
  if thresholds[i] ~= '' then
    spends[i] = redis.call('GET', spend_keys[i])
    if not spends[i] then hit = hit .. i end
  end
end
if hit ~= '' then return {'init', hit} end
for i = 1, 2 do
  if rpm[i] >= 0 then requests[i] = tonumber(redis.call('GET', KEYS[8 + i] .. ':' .. fmt(minute)) or '0') end
  if tpm[i] >= 0 then used[i] = tonumber(redis.call('GET', KEYS[2 + i] .. ':' .. fmt(window)) or '0') end
end
for i = 1, 2 do
  if rpm[i] >= 0 and requests[i] >= rpm[i] then hit = hit .. i end
end
if hit ~= '' then return reply('requests') end
for i = 1, 2 do
  local threshold = thresholds[i]
  if threshold ~= '' then
    -- spend and threshold may pass 2^53: compare them as canonical digit strings.
    local over
    if string.sub(threshold, 1, 1) == '-' then over = true
    elseif #spends[i] ~= #threshold then over = #spends[i] > #threshold
    else over = spends[i] > threshold end
    if over then hit = hit .. i end
  end
end
if hit ~= '' then return reply('budget') end
for i = 1, 2 do
  if tpm[i] >= 0 and used[i] + tokens > tpm[i] then hit = hit .. i end
end
if hit ~= '' then return reply('tokens') end
for i = 1, 2 do
  if conc[i] >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4 + i], '-inf', '(' .. fmt(now - horizon))
    if redis.call('ZCARD', KEYS[4 + i]) >= conc[i] then hit = hit .. i end
  end
end
if hit ~= '' then return reply('concurrency') end
for i = 1, 2 do
  if rpm[i] >= 0 then
    local key = KEYS[8 + i] .. ':' .. fmt(minute)
    requests[i] = redis.call('INCR', key)
    redis.call('PEXPIRE', key, minute_left + 1000)
  end
  if tpm[i] >= 0 then
    local key = KEYS[2 + i] .. ':' .. fmt(window)
    used[i] = redis.call('INCRBY', key, tokens)
    redis.call('PEXPIRE', key, ms_left + 1000)
  end
  if conc[i] >= 0 then
    redis.call('ZADD', KEYS[4 + i], now, rid)
    redis.call('PEXPIRE', KEYS[4 + i], horizon)
  end
  if thresholds[i] ~= '' then
    redis.call('INCRBY', spend_keys[i], ARGV[11])
    redis.call('HSET', hold_keys[i], rid, ARGV[11] .. ':' .. fmt(now))
    redis.call('EXPIRE', hold_keys[i], tonumber(ARGV[12]))
  end
end
return reply('ok')
