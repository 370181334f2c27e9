-- activate.lua: make due Scheduled and AwaitingRetry jobs Enqueued.
-- KEYS[1]: the tag {P} (key names from keys.py); reads K_DUE, writes K_JOB..id,
--       K_READY..queue, K_STATE..state, K_COUNTS; wakes K_WAKE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] limit
-- A job that waited out a crash backoff (AwaitingRetry by reason lease_expired,
-- see recover.lua) keeps its place in its queue; any other joins the back.
-- Returns {wake generation or 0, number activated}.

-- the enqueued_at to keep if the latest history entry is a crash recovery to
-- AwaitingRetry (an entry starts with '["<state>",', which no JSON string holds)
local function crash_place(st)
  local history = st[R_HISTORY]
  if st[R_STATE] ~= RET or not history then return nil end
  local last = string.match(history, '.*()%["awaiting_retry",')
  if last and string.find(history, '^%["awaiting_retry",%d+,"lease_expired",', last) then
    return tonumber(st[R_ENQUEUED])
  end
  return nil
end

local now = clock(ARGV[1])
local n = 0
local ids = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local jk = K_JOB .. id
  local st = read(jk)
  local state, run_at = st[R_STATE], st[R_RUN_AT]
  if (state == SCH or state == RET) and run_at and tonumber(run_at) <= now then
    move(jk, id, st, ENQ, now, 'due', nil, tonumber(st[R_ATTEMPTS]), nil, {}, crash_place(st))
    n = n + 1
  else
    zrem(K_DUE, id)
  end
end
flush()
if n > 0 then return {wake(), n} end
return {0, 0}
