-- POST /posts signed in, a unique title per request.
--   wrk -s bench/wrk/create.lua http://127.0.0.1:PORT -- <bearer token> <run tag>
-- Titles are "[bench] <tag> <thread>-<n>": bench/run.py deletes them after the workload.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[1],
  }
  tag = args[2]
  sent = 0
  content = string.rep("Benchmark post body: the quick brown fox jumps over the lazy dog. ", 8)
end

function request()
  sent = sent + 1
  local body = string.format(
    '{"title": "[bench] %s %d-%d", "content": "%s", "published": true}',
    tag, thread_number or 0, sent, content
  )
  return wrk.format("POST", "/posts", headers, body)
end
