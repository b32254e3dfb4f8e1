-- wrk script of bench/gateway_overhead.py: POST one chat completion, print a JSON summary.
-- The body is the one of ../shared/bench-kit/wrk_chat.lua, so that the figures compare.
-- env: BENCH_MODEL, BENCH_KEY (bearer), BENCH_STREAM=1 for "stream": true, BENCH_LABEL,
--      BENCH_IDS=path: append the x-request-id of every 200 response to that file (gateway
--      runs only; parsing headers in Lua costs a little, so direct runs do without).
local model = os.getenv("BENCH_MODEL") or "mock-gpt"
local key = os.getenv("BENCH_KEY")
local stream = os.getenv("BENCH_STREAM") == "1"
local label = os.getenv("BENCH_LABEL") or ""
local ids_path = os.getenv("BENCH_IDS")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32' ..
  (stream and ',"stream":true' or '') .. '}'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if ids_path and ids_path ~= "" then
  ids = {}
  response = function(status, headers, body)
    if status == 200 then
      local id = headers["x-request-id"] or headers["X-Request-Id"] or headers["X-Request-ID"]
      if id then ids[#ids + 1] = id end
    end
  end
end

done = function(summary, latency, requests)
  if ids_path and ids_path ~= "" then
    local f = io.open(ids_path, "a")
    for _, thread in ipairs(threads) do
      for _, id in ipairs(thread:get("ids") or {}) do f:write(id, "\n") end
    end
    f:close()
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  local non2xx = e.status
  local ok = summary.requests - non2xx - e.connect - e.read - e.write - e.timeout
  io.write(string.format(
    '{"label":"%s","requests":%d,"ok":%d,"seconds":%.3f,"rps":%.1f,"ok_rps":%.1f,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"mean_ms":%.3f,"max_ms":%.3f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d,"non2xx":%d}\n',
    label, summary.requests, ok, secs, summary.requests / secs, ok / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.mean / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, non2xx))
end
