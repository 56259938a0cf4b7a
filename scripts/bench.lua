-- wrk script for scripts/bench: POST a 100-byte message to BENCH_PATH, keep-alive.
-- BENCH_FIELD is the JSON field holding the base64 message ("data" for kmsgw,
-- "input" for Vault transit); BENCH_HEADER/BENCH_TOKEN add one header (a token).
-- BENCH_BATCH=N sends N messages per request instead: `{"data": [..]}` for kmsgw,
-- `{"batch_input": [{"input": ..}, ..]}` when BENCH_FIELD is "input".
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/keys/bench/sign"
wrk.headers["Content-Type"] = "application/json"
local header = os.getenv("BENCH_HEADER")
if header then
  wrk.headers[header] = os.getenv("BENCH_TOKEN")
end
local field = os.getenv("BENCH_FIELD") or "data"
local message = '"' .. string.rep("WlpaWlpa", 16) .. 'WlpaWg=="'
local batch = tonumber(os.getenv("BENCH_BATCH") or "")
if batch then
  local items = {}
  for i = 1, batch do
    items[i] = field == "input" and ('{"input":' .. message .. '}') or message
  end
  local name = field == "input" and "batch_input" or field
  wrk.body = '{"' .. name .. '":[' .. table.concat(items, ",") .. ']}'
else
  wrk.body = '{"' .. field .. '":' .. message .. '}'
end

-- BENCH_KEYS=N: each request signs with one of the keys k0 … k(N-1): a random one,
-- or with BENCH_ORDER=seq the next one in turn (k0, k1, …, wrapping around).
local keys = tonumber(os.getenv("BENCH_KEYS") or "")
if keys then
  local sequential = os.getenv("BENCH_ORDER") == "seq"
  local next_key = 0
  math.randomseed(os.time())
  request = function()
    local n
    if sequential then
      n = next_key
      next_key = (next_key + 1) % keys
    else
      n = math.random(0, keys - 1)
    end
    return wrk.format(nil, "/keys/k" .. n .. "/sign")
  end
end
