-- cancel.lua: flag a Processing job for cancellation (its holder learns it
-- from its next heartbeat).
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_JOB..id.
-- ARGV[1] job id
-- Returns 1 if the flag was set, 0 if the job is not Processing.
local jk = K_JOB .. ARGV[1]
if redis.call('HGET', jk, 'state') ~= PRO then return 0 end
redis.call('HSET', jk, 'cancel', '1')
return 1
