-- Prepended to every script: `now` in ms from ARGV[1] (an injected clock) or Redis' own TIME,
-- the one clock every gateway process shares.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%d', n) end
