-- recover.lua: give back Processing jobs whose lease expired (their holder died).
-- KEYS[1]: the tag {P} (key names from keys.py); reads K_LEASES, writes K_JOB..id,
--       K_READY..queue, K_STATE..state, K_DUE, K_EXPIRY, K_COUNTS, K_STATS;
--       wakes K_WAKE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] limit
-- ARGV[3] max crashes: the crash that reaches it fails the job for good
-- ARGV[4] crash backoff (µs): delay = 0 for the first crash, else backoff * 2^(crashes - 2)
-- ARGV[5] failed ttl (µs)
-- ARGV[6] reason of a quarantined job (worker_crashed)
-- A recovered job keeps its place in its queue (its enqueued_at), now or when
-- activate.lua ends its backoff.
-- Returns {wake generation or 0, recovered id, ...}.
local now = clock(ARGV[1])
local snow = n2s(now)
local max_crashes = tonumber(ARGV[3])
local backoff = tonumber(ARGV[4])
local failed_ttl = tonumber(ARGV[5])
local crashed = ARGV[6]
local out = {0}
local ids = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local jk = K_JOB .. id
  local st = read(jk)
  if st[R_STATE] ~= PRO then
    zrem(K_LEASES, id)
  else
    local crashes = tonumber(st[R_CRASHES] or '0') + 1
    local attempts = tonumber(st[R_ATTEMPTS])
    local server = opt(st[R_SERVER])
    redis.call('HDEL', jk, 'lease_token', 'lease_expires_at', 'server_id', 'cancel')
    local fields = {'crashes', crashes}
    if crashes >= max_crashes then
      redis.call('HDEL', jk, 'traceback')
      local expires = now + failed_ttl
      fields = {'crashes', crashes, 'error_type', 'WorkerCrashed',
        'error', crashed .. ': the worker running this job died ' .. crashes .. ' times',
        'finished_at', snow, 'expires_at', n2s(expires)}
      add_stat('f', now)
      move(jk, id, st, FAI, now, crashed, server, attempts, expires, fields)
    else
      local delay = 0
      if crashes > 1 then delay = backoff * 2 ^ (crashes - 2) end
      if delay > 0 then
        local run_at = now + delay
        fields[3] = 'run_at'
        fields[4] = n2s(run_at)
        move(jk, id, st, RET, now, 'lease_expired', server, attempts, run_at, fields)
      else
        move(jk, id, st, ENQ, now, 'lease_expired', server, attempts, nil, fields,
          tonumber(st[R_ENQUEUED]))
      end
    end
    out[#out + 1] = id
  end
end
flush()
if #out > 1 then out[1] = wake() end
return out
