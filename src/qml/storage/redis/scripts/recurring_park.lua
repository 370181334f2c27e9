-- recurring_park.lua: enqueue a template's tick jobs and move it to its next
-- tick, guarded by the claim token.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_REC..id, K_REC_DUE and, for
--       the jobs, what enqueue.lua writes; may wake K_WAKE.
-- ARGV[1] claim time (µs): the jobs' created_at
-- ARGV[2] template id
-- ARGV[3] claim token
-- ARGV[4] next_run_at|''   ARGV[5] last_run_at|''
-- ARGV[6] number of jobs, ARGV[7..] jobs as in enqueue.lua (a job whose dedup
--         key or id is taken is skipped)
-- Returns {1|0 (0: the claim was lost, nothing written), wake generation or 0}.
local now = tonumber(ARGV[1])
local id, token = ARGV[2], ARGV[3]
local rk = K_REC .. id
local holder = redis.call('HGET', rk, 'claimed_by')
if not holder or string.sub(holder, -(#token + 1)) ~= '#' .. token then return {0, 0} end
local last_job = nil
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local rec
  rec, i = read_job(i)
  if not (rec.dedup and redis.call('HEXISTS', K_DEDUP, rec.dedup) == 1)
      and redis.call('EXISTS', K_JOB .. rec.id) == 0 then
    insert(rec, now)
    last_job = rec.id
  end
end
flush()
redis.call('HDEL', rk, 'claimed_by', 'claim_expires_at')
local next_run = opt(ARGV[4])
if next_run then
  redis.call('HSET', rk, 'next_run_at', next_run)
  redis.call('ZADD', K_REC_DUE, next_run, id)
else
  redis.call('HDEL', rk, 'next_run_at')
  redis.call('ZREM', K_REC_DUE, id)
end
if opt(ARGV[5]) then redis.call('HSET', rk, 'last_run_at', ARGV[5]) end
if last_job then
  redis.call('HSET', rk, 'last_job_id', last_job)
  return {1, wake()}
end
return {1, 0}
