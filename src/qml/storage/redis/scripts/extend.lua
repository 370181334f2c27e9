-- extend.lua: renew leases (heartbeat), each guarded by its fencing token.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_JOB..id, K_LEASES.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] lease length (µs)
-- ARGV[3..] pairs: job id, token
-- Returns {new deadline, per pair: 0 lost, 1 held, 2 held and cancel requested}.
local now = clock(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local sdeadline = n2s(deadline)
local out = {deadline}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local jk = K_JOB .. id
  local st = redis.call('HMGET', jk, 'state', 'lease_token', 'cancel')
  if st[1] == PRO and st[2] == ARGV[i + 1] then
    redis.call('HSET', jk, 'lease_expires_at', sdeadline)
    redis.call('ZADD', K_LEASES, deadline, id)
    out[#out + 1] = st[3] == '1' and 2 or 1
  else
    out[#out + 1] = 0
  end
end
return out
