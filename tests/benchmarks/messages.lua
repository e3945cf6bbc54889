-- wrk script: POST one Anthropic Messages request on every connection, as fast as answers come
-- back (closed loop), and print one machine-readable summary line for bench_proxy.py.
-- No response() callback: defining one makes wrk parse every answer in Lua, which slows it
-- down; answers with a status >= 400 are still counted, in status_errors.
--
-- Environment: BENCH_BODY (the JSON body), BENCH_API_KEY (x-api-key; default "bench-key").

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
  or '{"model":"claude-sonnet-5-5","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = os.getenv("BENCH_API_KEY") or "bench-key"

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,'
      .. '"timeouts":%d,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end
