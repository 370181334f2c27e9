-- enqueue.lua: store new jobs, all or none; hand them to parked waiters.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_JOB..id, K_READY..queue,
--       K_STATE..state, K_ALL, K_DUE, K_COUNTS, K_DEDUP, K_DEDUP_AT; hands off
--       through K_PARK..queue, K_PARKED and K_HAND..id (see hand_off in _lib.lua);
--       wakes K_WAKE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] number of jobs
-- ARGV[3..] per job: id, queue, priority, run_at|'', dedup_key|'', n, n x (field, value)
-- Returns {1, wake generation} or {0, reason} when an id or a dedup key is taken
-- (then nothing is written). The generation is 0 when parked waiters took
-- every new job: nobody else is woken.
local now = clock(ARGV[1])
local total = tonumber(ARGV[2])
local recs, ids, keys = {}, {}, {}
local seen, seen_keys = {}, {}
local i = 3
for j = 1, total do
  local rec
  rec, i = read_job(i)
  if seen[rec.id] then return {0, 'a job with id ' .. rec.id .. ' already exists'} end
  seen[rec.id] = true
  ids[j] = rec.id
  if rec.dedup then
    if seen_keys[rec.dedup] then
      return {0, 'a job with dedup_key ' .. rec.dedup .. ' already exists'}
    end
    seen_keys[rec.dedup] = true
    keys[#keys + 1] = rec.dedup
  end
  recs[j] = rec
end
local taken_id = first_stored(ids)
if taken_id then return {0, 'a job with id ' .. taken_id .. ' already exists'} end
local taken_key = first_field(K_DEDUP, keys)
if taken_key then return {0, 'a job with dedup_key ' .. taken_key .. ' already exists'} end
if total == 1 and not (recs[1].run_at and tonumber(recs[1].run_at) > now) then
  local how = hand_new(recs[1], now)
  if how == 'handed' then
    flush()
    return {1, 0}  -- taken by a parked waiter: nobody else is woken
  elseif how == 'nobody' then
    insert(recs[1], now)
    flush()
    return {1, wake()}
  end
end
local ready = {}  -- queues that got Enqueued jobs
local scheduled = false
for j = 1, total do
  local rec = recs[j]
  insert(rec, now)
  if rec.run_at and tonumber(rec.run_at) > now then
    scheduled = true
  else
    ready[rec.queue] = true
  end
end
flush()  -- the ready zsets are written before a hand-off claims from them
local taken = not scheduled
for queue in pairs(ready) do
  if not hand_off(queue, now) then taken = false end
end
flush()
if taken then return {1, 0} end
return {1, wake()}
