-- wait.lua: register a storage as waiting for work, and read the generation
-- of the last wake-up signal (signals after it are published to the waiter).
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_WAITERS, reads K_WAKE_GEN.
-- ARGV[1] waiter id (one per storage handle)
-- ARGV[2] how long it waits at most (µs)
-- Returns the current wake-up generation.
local now = clock('')
register_waiter(ARGV[1], now, now + tonumber(ARGV[2]))
return tonumber(redis.call('GET', K_WAKE_GEN) or '0')
