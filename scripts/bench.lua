-- wrk script for scripts/bench: POST a 100-byte message to BENCH_PATH, keep-alive.
-- BENCH_FIELD is the JSON field holding the base64 message ("data" for kmsgw,
-- "input" for Vault transit); BENCH_HEADER/BENCH_TOKEN add one header (a token).
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/keys/bench/sign"
wrk.headers["Content-Type"] = "application/json"
local header = os.getenv("BENCH_HEADER")
if header then
  wrk.headers[header] = os.getenv("BENCH_TOKEN")
end
wrk.body = '{"' .. (os.getenv("BENCH_FIELD") or "data") .. '":"'
  .. string.rep("WlpaWlpa", 16) .. 'WlpaWg=="}'

-- BENCH_KEYS=N: each request signs with a random one of the keys k0 … k(N-1).
local keys = tonumber(os.getenv("BENCH_KEYS") or "")
if keys then
  math.randomseed(os.time())
  request = function()
    return wrk.format(nil, "/keys/k" .. math.random(0, keys - 1) .. "/sign")
  end
end
