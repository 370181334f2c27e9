-- queue_pause.lua: pause or resume a queue (a resume wakes idle servers).
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_PAUSED; may wake K_WAKE.
-- ARGV[1] queue name
-- ARGV[2] '1' to pause, '0' to resume
-- Returns the wake generation (0 when nothing was woken).
if ARGV[2] == '1' then
  redis.call('SADD', K_PAUSED, ARGV[1])
  return 0
end
if redis.call('SREM', K_PAUSED, ARGV[1]) == 1 then return wake() end
return 0
