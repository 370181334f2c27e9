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
-- Queues are taken in order (paused ones skipped); inside a queue by
-- priority desc, then enqueued_at, then id (the ready member order).
-- Suspects beyond ARGV[7] are passed over and put back with their score (they
-- keep their place); at most MAX_PASSED per call, then the queue is left.
-- Returns {now, lease deadline, wake generation, job 1 values, ...}: each job as
-- HMGET of FIELDS, the order of codec.JOB_FIELDS.
local FIELDS = {'method', 'args', 'queue', 'priority', 'max_retries', 'run_at', 'timeout',
  'dedup_key', 'meta', 'id', 'state', 'attempts', 'crashes', 'created_at', 'updated_at',
  'enqueued_at', 'started_at', 'finished_at', 'expires_at', 'error_type', 'error', 'traceback',
  'result', 'server_id', 'lease_token', 'lease_expires_at', 'cancel', 'progress', 'history'}
local now = clock(ARGV[1])
local server = ARGV[2]
local deadline = now + tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local tokens = ARGV[5]
local out = {now, deadline, tonumber(redis.call('GET', K_WAKE_GEN) or '0')}
if ARGV[6] ~= '' then redis.call('ZREM', K_WAITERS, ARGV[6]) end
local suspects = tonumber(ARGV[7])  -- nil: any number
local suspect_crashes = tonumber(ARGV[8])
local MAX_PASSED = 1000
local got = 0
local snow, sdeadline = n2s(now), n2s(deadline)
for q = 9, #ARGV do
  if got >= limit then break end
  local queue = ARGV[q]
  if redis.call('SISMEMBER', K_PAUSED, queue) == 0 then
    local rk = K_READY .. queue
    local passed = {}  -- score, member, ... of the suspects passed over
    while got < limit and #passed < 2 * MAX_PASSED do
      local popped = redis.call('ZPOPMIN', rk, limit - got)
      if #popped == 0 then break end
      for p = 1, #popped, 2 do
        local id = string.sub(popped[p], 17)
        local jk = K_JOB .. id
        local st = redis.call('HMGET', jk, 'state', 'attempts', 'queue', 'history', 'crashes')
        local take = st[1] == ENQ and st[3] == queue
        if take and suspects ~= nil and tonumber(st[5] or '0') >= suspect_crashes then
          if suspects > 0 then
            suspects = suspects - 1
          else
            take = false
            passed[#passed + 1] = popped[p + 1]
            passed[#passed + 1] = popped[p]
          end
        end
        if take then
          got = got + 1
          local attempts = tonumber(st[2]) + 1
          redis.call('HSET', jk, 'state', PRO, 'attempts', attempts, 'started_at', snow,
            'updated_at', snow, 'server_id', server,
            'lease_token', string.sub(tokens, got * 32 - 31, got * 32),
            'lease_expires_at', sdeadline,
            'history', append(st[4], entry(PRO, now, nil, server, attempts)))
          zadd(K_LEASES, deadline, id)
          zrem(K_STATE .. ENQ, id)
          zadd(K_STATE .. PRO, 0, id)
          count(queue, ENQ, -1)
          count(queue, PRO, 1)
          out[got + 3] = redis.call('HMGET', jk, unpack(FIELDS))
        end
      end
    end
    if #passed > 0 then redis.call('ZADD', rk, unpack(passed)) end
  end
end
flush()
return out
