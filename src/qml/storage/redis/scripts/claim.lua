-- claim.lua: claim up to N Enqueued jobs with a lease and a fencing token.
-- KEYS[1]: the tag {P} (key names from keys.py); pops K_READY..queue, reads K_PAUSED and
--       K_WAKE_GEN, writes K_JOB..id, K_STATE..state, K_LEASES, K_COUNTS, K_WAITERS.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] server id
-- ARGV[3] lease length (µs)
-- ARGV[4] limit N
-- ARGV[5] N x 32 random hex characters: the fencing token of each claimed job
-- ARGV[6] waiter id of the claiming storage|'' (it stops waiting, see wait.lua)
-- ARGV[7] how many suspects it may take, in claim order|'' (any)
-- ARGV[8] crashes that make a job a suspect (>= 1)
-- ARGV[9..] queue names, first queue first
-- The order and the suspects rule: claim_jobs in _lib.lua.
-- Returns {now, lease deadline, wake generation, job 1 values, ...}: each job as
-- HMGET of JOB_FIELDS, the order of codec.JOB_FIELDS.
local now = clock(ARGV[1])
local deadline = now + tonumber(ARGV[3])
local out = {now, deadline, tonumber(redis.call('GET', K_WAKE_GEN) or '0')}
if ARGV[6] ~= '' then redis.call('ZREM', K_WAITERS, ARGV[6]) end
claim_jobs(out, now, ARGV[2], deadline, tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[7]),
  tonumber(ARGV[8]), {unpack(ARGV, 9)})
flush()
return out
