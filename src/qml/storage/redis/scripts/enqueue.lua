-- enqueue.lua: store new jobs, all or none.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_JOB..id, K_READY..queue,
--       K_STATE..state, K_ALL, K_DUE, K_COUNTS, K_DEDUP, K_DEDUP_AT; wakes K_WAKE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] number of jobs
-- ARGV[3..] per job: id, queue, priority, run_at|'', dedup_key|'', n, n x (field, value)
-- Returns {1, wake generation} or {0, reason} when an id or a dedup key is taken
-- (then nothing is written).
local now = clock(ARGV[1])
local total = tonumber(ARGV[2])
local recs = {}
local seen, seen_keys = {}, {}
local i = 3
for j = 1, total do
  local rec
  rec, i = read_job(i)
  if seen[rec.id] or redis.call('EXISTS', K_JOB .. rec.id) == 1 then
    return {0, 'a job with id ' .. rec.id .. ' already exists'}
  end
  seen[rec.id] = true
  if rec.dedup then
    if seen_keys[rec.dedup] or redis.call('HEXISTS', K_DEDUP, rec.dedup) == 1 then
      return {0, 'a job with dedup_key ' .. rec.dedup .. ' already exists'}
    end
    seen_keys[rec.dedup] = true
  end
  recs[j] = rec
end
for j = 1, total do
  insert(recs[j], now)
end
flush()
return {1, wake()}
