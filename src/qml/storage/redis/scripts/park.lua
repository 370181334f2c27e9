-- park.lua: claim like claim.lua; when nothing is ready, park the request so
-- that the next enqueue claims for it and hands the claim over (hand_off in
-- _lib.lua), and register as waiting for other wake-ups (as wait.lua does).
-- KEYS[1]: the tag {P} (key names from keys.py); claims as claim.lua; writes
--       K_PARKED, K_PARK..queue, K_WAITERS.
-- ARGV[1] park id (unique per wait)
-- ARGV[2] waiter id of the storage (see wait.lua)
-- ARGV[3] how long it stays parked at most (µs)
-- ARGV[4] server id
-- ARGV[5] lease length (µs)
-- ARGV[6] limit N
-- ARGV[7] N x 32 random hex characters: the fencing token of each claimed job
-- ARGV[8] how many suspects it may take|'' (any)
-- ARGV[9] crashes that make a job a suspect (>= 1)
-- ARGV[10..] queue names, first queue first
-- Returns {now, lease deadline, wake generation, parked 1|0, job 1 values, ...}:
-- the jobs claimed now, as claim.lua returns them (parked 0), or none (parked 1).
local now = clock('')
local id = ARGV[1]
local lease = tonumber(ARGV[5])
local deadline = now + lease
local queues = {unpack(ARGV, 10)}
local out = {now, deadline, tonumber(redis.call('GET', K_WAKE_GEN) or '0'), 0}
local limit, tokens, suspects, crashes = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]),
  tonumber(ARGV[9])
local got = claim_jobs(out, now, ARGV[4], deadline, limit, tokens, suspects, crashes, queues)
flush()
if got > 0 then
  return out  -- its registration as a waiter (if any) ends by itself
end
local until_ = now + tonumber(ARGV[3])
redis.call('HSET', K_PARKED, id, cjson.encode({server = ARGV[4], lease = lease, limit = limit,
  tokens = tokens, suspects = suspects or -1, crashes = crashes, queues = queues}))
for _, q in ipairs(queues) do
  local pk = K_PARK .. q
  for _, stale in ipairs(redis.call('ZRANGEBYSCORE', pk, '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('ZREM', pk, stale)  -- a waiter that died while parked
    redis.call('HDEL', K_PARKED, stale)
  end
  redis.call('ZADD', pk, until_, id)
end
register_waiter(ARGV[2], now, until_)
out[4] = 1
return out
