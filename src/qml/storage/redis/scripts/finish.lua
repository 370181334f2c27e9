-- finish.lua: record the outcomes of attempts, each guarded by its fencing token.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_JOB..id, K_READY..queue,
--       K_STATE..state, K_DUE, K_LEASES, K_EXPIRY, K_COUNTS, K_STATS; may wake K_WAKE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] number of outcomes
-- ARGV[3..] per outcome: id, token, target state, micros, reason|'',
--   nset, nset x (field, value), ndel, ndel x field
--   target succeeded|failed: micros = ttl (expires_at = now + ttl)
--   target awaiting_retry:   micros = delay (run_at = now + delay)
--   target enqueued|scheduled (a release): attempt not counted; scheduled
--   gets run_at = now + micros. The fields set/deleted are the result and
--   error fields, written only when the token holds.
-- Returns {wake generation or 0, 1|0 per outcome (applied or lease lost)}.
local now = clock(ARGV[1])
local snow = n2s(now)
local total = tonumber(ARGV[2])
local out = {0}
local woke = false
local i = 3
for j = 1, total do
  local id, token, target, micros = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local reason = opt(ARGV[i + 4])
  local nset = tonumber(ARGV[i + 5])
  local sets = i + 6
  local ndel = tonumber(ARGV[sets + 2 * nset])
  local dels = sets + 2 * nset + 1
  i = dels + ndel
  local jk = K_JOB .. id
  local st = read(jk)
  if st[R_STATE] ~= PRO or st[R_TOKEN] ~= token then
    out[j + 1] = 0
  else
    local attempts = tonumber(st[R_ATTEMPTS])
    local fields = {}
    for a = sets, sets + 2 * nset - 1 do fields[#fields + 1] = ARGV[a] end
    local gone = {'lease_token', 'lease_expires_at', 'server_id'}
    if st[R_CANCEL] then gone[#gone + 1] = 'cancel' end
    for a = dels, dels + ndel - 1 do gone[#gone + 1] = ARGV[a] end
    redis.call('HDEL', jk, unpack(gone))
    local when = nil
    if target == SUC or target == FAI then
      when = now + micros
      fields[#fields + 1] = 'finished_at'
      fields[#fields + 1] = snow
      fields[#fields + 1] = 'expires_at'
      fields[#fields + 1] = n2s(when)
      add_stat(target == SUC and 's' or 'f', now)
    elseif target == RET then
      when = now + micros
      fields[#fields + 1] = 'run_at'
      fields[#fields + 1] = n2s(when)
    else
      attempts = math.max(0, attempts - 1)
      fields[#fields + 1] = 'attempts'
      fields[#fields + 1] = n2s(attempts)
      if target == SCH then
        when = now + micros
        fields[#fields + 1] = 'run_at'
        fields[#fields + 1] = n2s(when)
      else
        woke = true
      end
    end
    move(jk, id, st, target, now, reason, opt(st[R_SERVER]), attempts, when, fields)
    out[j + 1] = 1
  end
end
flush()
if woke then out[1] = wake() end
return out
