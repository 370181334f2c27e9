-- unpark.lua: end a parking (park.lua) before any claim was handed over.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_PARKED, K_PARK..queue,
--       K_HAND..id.
-- ARGV[1] park id
-- ARGV[2] '1': the waiter is blocked on its list: push '' to end the wait |
--         '0': it is not: take what the list holds
-- Returns {ended 1|0 (0: the parking was already over), claim, ...}: with '0',
-- the claims (JSON) handed over before the parking ended, which the caller
-- now holds.
local id = ARGV[1]
local hk = K_HAND .. id
local raw = redis.call('HGET', K_PARKED, id)
local out = {0}
if raw then
  unpark(id, cjson.decode(raw))
  out[1] = 1
end
if ARGV[2] == '1' then
  redis.call('RPUSH', hk, '')
  redis.call('PEXPIRE', hk, HAND_TTL_MS)
else
  for _, claim in ipairs(redis.call('LRANGE', hk, 0, -1)) do
    if claim ~= '' then out[#out + 1] = claim end
  end
  redis.call('DEL', hk)
end
return out
