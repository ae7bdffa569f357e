-- wrk script for benchmarks/intake.py: POST one recorded Merge Request Hook per
-- request, each with its own Idempotency-Key so that the bot stores every
-- delivery instead of recognising a redelivery.
--
-- Arguments (after --): run id, path of the JSON body. The webhook secret comes
-- from BENCH_WEBHOOK_TOKEN so that it is not on the command line.
-- done() prints one JSON line: requests, 2xx answers, others, latencies.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  run = args[1]
  local file = assert(io.open(args[2], "rb"))
  body = file:read("*a")
  file:close()
  token = os.getenv("BENCH_WEBHOOK_TOKEN") or ""
  sent = 0
  ok = 0
  other = 0
end

function request()
  sent = sent + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Gitlab-Event"] = "Merge Request Hook",
    ["X-Gitlab-Token"] = token,
    ["Idempotency-Key"] = string.format("%s-%d-%d", run, id, sent),
  }
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local ok_total, other_total = 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "ok": %d, "other": %d, '
      .. '"socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, ok_total, other_total,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
