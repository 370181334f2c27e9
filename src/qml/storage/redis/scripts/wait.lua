-- wait.lua: register a storage as waiting for work, and read the generation
-- of the last wake-up signal (signals after it are published to the waiter).
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_WAITERS, reads K_WAKE_GEN.
-- ARGV[1] waiter id (one per storage handle)
-- ARGV[2] how long it waits at most (µs)
-- Returns the current wake-up generation.
local now = clock('')
redis.call('ZREMRANGEBYSCORE', K_WAITERS, '-inf', '(' .. n2s(now))
redis.call('ZADD', K_WAITERS, now + tonumber(ARGV[2]), ARGV[1])
return tonumber(redis.call('GET', K_WAKE_GEN) or '0')
