-- transition.lua: move jobs to a state on request (delete, requeue, move).
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_JOB..id, K_READY..queue,
--       K_STATE..state, K_DUE, K_LEASES, K_EXPIRY, K_COUNTS; may wake K_WAKE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] target state
-- ARGV[3] reason|''
-- ARGV[4] ttl (µs)|'': expires_at = now + ttl (and finished_at = now unless
--         the target is deleted); '' clears expires_at
-- ARGV[5] '1' to reset attempts and crashes
-- ARGV[6] run_at (µs)|'' for a Scheduled/AwaitingRetry target ('' = now)
-- ARGV[7] number of source states k, ARGV[8 .. 7+k] the states a job may be in
-- ARGV[8+k ..] job ids (a repeated id is moved once)
-- Returns {wake generation or 0, moved id, ...} (ids in input order).
local now = clock(ARGV[1])
local snow = n2s(now)
local to, reason = ARGV[2], opt(ARGV[3])
local ttl = opt(ARGV[4])
local reset = ARGV[5] == '1'
local run_at = opt(ARGV[6])
local k = tonumber(ARGV[7])
local from = {}
for s = 8, 7 + k do from[ARGV[s]] = true end
local out = {0}
local done = {}
for a = 8 + k, #ARGV do
  local id = ARGV[a]
  local jk = K_JOB .. id
  local st = read(jk)
  if st[R_STATE] and from[st[R_STATE]] and not done[id] then
    done[id] = true
    local attempts = tonumber(st[R_ATTEMPTS])
    local fields = {}
    local when = nil
    if ttl then
      when = now + tonumber(ttl)
      fields = {'expires_at', n2s(when)}
      if to ~= DEL then
        fields[3] = 'finished_at'
        fields[4] = snow
      end
    else
      redis.call('HDEL', jk, 'expires_at')
    end
    if reset then
      attempts = 0
      fields[#fields + 1] = 'attempts'
      fields[#fields + 1] = 0
      fields[#fields + 1] = 'crashes'
      fields[#fields + 1] = 0
    end
    if to == SCH or to == RET then
      when = run_at and tonumber(run_at) or now
      fields[#fields + 1] = 'run_at'
      fields[#fields + 1] = n2s(when)
    elseif to == ENQ then
      redis.call('HDEL', jk, 'run_at')
    elseif to == PRO then
      when = now
    end
    move(jk, id, st, to, now, reason, nil, attempts, when, fields)
    out[#out + 1] = id
  end
end
flush()
if to == ENQ and #out > 1 then out[1] = wake() end
return out
