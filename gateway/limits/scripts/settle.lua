-- Settle one admitted request to what it really used, in one round trip.
-- KEYS: as admit.lua (the scopes and budgets the request holds)
-- ARGV: 1 now ('' = TIME), 2 request id, 3 tokens window ms, 4 reserved window, 5 token delta,
--       6 actual units, 7 n scopes, 8 m budgets,
--       per scope: tpm held?, concurrency held? ('1' = held)
local rid = ARGV[2]
local window_ms = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local delta = tonumber(ARGV[5])
local units = ARGV[6]
local n = tonumber(ARGV[7])
local m = tonumber(ARGV[8])
local current = math.floor(now / window_ms)
for i = 1, n do
  if ARGV[8 + 2 * i] == '1' then redis.call('ZREM', KEYS[3 * i], rid) end
  if ARGV[7 + 2 * i] == '1' and delta ~= 0 then
    -- An overrun settled after its window counts in the current one; an underrun of a
    -- finished window is dropped with it.
    local target = nil
    if current == window then target = window elseif delta > 0 then target = current end
    if target then
      local key = KEYS[3 * i - 1] .. ':' .. fmt(target)
      if redis.call('INCRBY', key, delta) < 0 then redis.call('SET', key, '0') end
      redis.call('PEXPIRE', key, (target + 1) * window_ms - now + 1000)
    end
  end
end
for j = 1, m do
  local spend, holds = KEYS[3 * n + 2 * j - 1], KEYS[3 * n + 2 * j]
  -- A missing counter will be initialised from the database, which is where the cost goes.
  if redis.call('EXISTS', spend) == 1 then
    local held = redis.call('HGET', holds, rid)
    if held then
      redis.call('HDEL', holds, rid)
      redis.call('DECRBY', spend, string.match(held, '^%d+'))
    end
    if redis.call('INCRBY', spend, units) < 0 then redis.call('SET', spend, '0', 'KEEPTTL') end
  end
end
return 1
