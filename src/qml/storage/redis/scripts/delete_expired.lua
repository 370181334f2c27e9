-- delete_expired.lua: remove final jobs whose expires_at has passed (bounded).
-- KEYS[1]: the tag {P} (key names from keys.py); reads K_EXPIRY, deletes K_JOB..id and
--       its entries in K_ALL, K_STATE..state, K_COUNTS. Dedup keys stay.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] limit
-- Returns the number of jobs removed.
local now = clock(ARGV[1])
local n = 0
local ids = redis.call('ZRANGEBYSCORE', K_EXPIRY, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local jk = K_JOB .. id
  local st = redis.call('HMGET', jk, 'state', 'queue', 'expires_at')
  zrem(K_EXPIRY, id)
  if st[1] and FINAL[st[1]] and st[3] and tonumber(st[3]) <= now then
    redis.call('UNLINK', jk)
    zrem(K_ALL, id)
    zrem(K_STATE .. st[1], id)
    count(st[2], st[1], -1)
    n = n + 1
  end
end
flush()
return n
