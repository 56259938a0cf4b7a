-- wrk script: POST /keys/bench/sign with a 100-byte message, keep-alive.
wrk.method = "POST"
wrk.path = "/keys/bench/sign"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"data":"' .. string.rep("WlpaWlpa", 16) .. 'WlpaWg=="}'
