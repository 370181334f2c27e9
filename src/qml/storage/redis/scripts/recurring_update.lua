-- recurring_update.lua: remove, pause or resume a recurring template.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_REC..id, K_REC_INDEX, K_REC_DUE.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] 'remove' | 'pause' | 'resume'
-- ARGV[3] template id
-- Returns 1, or 0 when there is no such template.
local rk = K_REC .. ARGV[3]
if redis.call('EXISTS', rk) == 0 then return 0 end
if ARGV[2] == 'remove' then
  redis.call('DEL', rk)
  redis.call('ZREM', K_REC_INDEX, ARGV[3])
  redis.call('ZREM', K_REC_DUE, ARGV[3])
else
  local now = clock(ARGV[1])
  redis.call('HSET', rk, 'paused', ARGV[2] == 'pause' and '1' or '0', 'updated_at', n2s(now))
end
return 1
