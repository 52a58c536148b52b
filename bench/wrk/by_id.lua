-- GET /posts/{id} for ids picked at random from a file (one id a line).
--   wrk -s bench/wrk/by_id.lua http://127.0.0.1:PORT -- bench/results/ids.txt
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  ids = {}
  for line in io.lines(args[1]) do
    ids[#ids + 1] = "/posts/" .. line
  end
  if #ids == 0 then
    error("no ids in " .. args[1])
  end
  math.randomseed(os.time() * 100 + (thread_number or 0))
end

function request()
  return wrk.format("GET", ids[math.random(#ids)])
end
