-- servers.lua: the server registry (heartbeat, removal, pruning of the silent).
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_SERVERS, K_SERVER_BEATS,
--       K_SERVER_STARTS.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] 'beat' | 'remove' | 'prune'
-- beat:   ARGV[3] server id, ARGV[4] JSON description, ARGV[5] started_at|''
--         (a server keeps its first started_at); returns 1
-- remove: ARGV[3] server id; returns 1
-- prune:  ARGV[3] silence (µs): servers whose last heartbeat is older are
--         removed; returns how many
-- Returns what the operation says above.
local now = clock(ARGV[1])
local op = ARGV[2]
if op == 'beat' then
  local id = ARGV[3]
  redis.call('HSET', K_SERVERS, id, ARGV[4])
  redis.call('ZADD', K_SERVER_BEATS, now, id)
  if opt(ARGV[5]) then
    redis.call('HSET', K_SERVER_STARTS, id, ARGV[5])
  else
    redis.call('HSETNX', K_SERVER_STARTS, id, n2s(now))
  end
  return 1
end
local ids
if op == 'remove' then
  ids = {ARGV[3]}
else
  ids = redis.call('ZRANGEBYSCORE', K_SERVER_BEATS, '-inf',
    '(' .. n2s(now - tonumber(ARGV[3])))
end
for _, id in ipairs(ids) do
  redis.call('HDEL', K_SERVERS, id)
  redis.call('ZREM', K_SERVER_BEATS, id)
  redis.call('HDEL', K_SERVER_STARTS, id)
end
return #ids
