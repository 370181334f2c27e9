-- recurring_upsert.lua: create or replace a recurring template. An existing
-- claim is kept, and so are last_run_at/last_job_id when the new value has none.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_REC..id, K_REC_INDEX, K_REC_DUE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] template id
-- ARGV[3] spec (JSON: cron, method, args, queue, ...)
-- ARGV[4] paused '1'|'0'
-- ARGV[5] next_run_at|''   ARGV[6] last_run_at|''   ARGV[7] last_job_id|''
-- ARGV[8] claimed_by|''    ARGV[9] claim_expires_at|'' (used for a new template)
-- Returns 1.
local now = clock(ARGV[1])
local id = ARGV[2]
local rk = K_REC .. id
local old = redis.call('HMGET', rk, 'created_at', 'claimed_by', 'claim_expires_at',
  'last_run_at', 'last_job_id')
local created = n2s(now)
local claimed_by, claim_expires = opt(ARGV[8]), opt(ARGV[9])
local last_run, last_job = opt(ARGV[6]), opt(ARGV[7])
if old[1] then
  created = old[1]
  claimed_by, claim_expires = opt(old[2]), opt(old[3])
  if not last_run then last_run, last_job = opt(old[4]), opt(old[5]) end
end
redis.call('DEL', rk)
redis.call('HSET', rk, 'id', id, 'spec', ARGV[3], 'paused', ARGV[4], 'created_at', created,
  'updated_at', n2s(now))
local next_run = opt(ARGV[5])
if next_run then redis.call('HSET', rk, 'next_run_at', next_run) end
if last_run then redis.call('HSET', rk, 'last_run_at', last_run) end
if last_job then redis.call('HSET', rk, 'last_job_id', last_job) end
if claimed_by then redis.call('HSET', rk, 'claimed_by', claimed_by) end
if claim_expires then redis.call('HSET', rk, 'claim_expires_at', claim_expires) end
redis.call('ZADD', K_REC_INDEX, 0, id)
if next_run then
  redis.call('ZADD', K_REC_DUE, next_run, id)
else
  redis.call('ZREM', K_REC_DUE, id)
end
return 1
