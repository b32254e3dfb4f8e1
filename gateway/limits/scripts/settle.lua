-- Settle one admitted request to what it really used, in one round trip.
-- KEYS: as admit.lua
-- ARGV: 1 now ('' = TIME), 2 request id, 3 tokens window ms, 4 reserved window, 5 token delta,
--       6 tpm tenant?, 7 tpm key?, 8 conc tenant?, 9 conc key? ('1' = held),
--       10 actual units for the tenant's budget ('' = none), 11 the same for the key's
local rid = ARGV[2]
local window_ms = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local delta = tonumber(ARGV[5])
local current = math.floor(now / window_ms)
local units = {ARGV[10], ARGV[11]}
local spend_keys = {KEYS[1], KEYS[7]}
local hold_keys = {KEYS[2], KEYS[8]}
for i = 1, 2 do
  if ARGV[7 + i] == '1' then redis.call('ZREM', KEYS[4 + i], rid) end
  if ARGV[5 + i] == '1' and delta ~= 0 then
    -- An overrun settled after its window counts in the current one; an underrun of a
    -- finished window is dropped with it.
    local target = nil
    if current == window then target = window elseif delta > 0 then target = current end
    if target then
      local key = KEYS[2 + i] .. ':' .. fmt(target)
      if redis.call('INCRBY', key, delta) < 0 then redis.call('SET', key, '0') end
      redis.call('PEXPIRE', key, (target + 1) * window_ms - now + 1000)
    end
  end
  -- A missing counter will be initialised from the database, which is where the cost goes.
  if units[i] ~= '' and redis.call('EXISTS', spend_keys[i]) == 1 then
    local held = redis.call('HGET', hold_keys[i], rid)
    if held then
      redis.call('HDEL', hold_keys[i], rid)
      redis.call('DECRBY', spend_keys[i], string.match(held, '^%d+'))
    end
    if redis.call('INCRBY', spend_keys[i], units[i]) < 0 then redis.call('SET', spend_keys[i], '0', 'KEEPTTL') end
  end
end
return 1
