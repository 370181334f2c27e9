-- prune.lua: drop old deduplication keys (bounded) and old minute statistics.
-- KEYS[1]: the tag {P} (key names from keys.py); writes K_DEDUP, K_DEDUP_AT, K_STATS.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] dedup age (µs): keys first used before now - age are dropped
-- ARGV[3] stats age (µs): minutes before now - age are dropped
-- ARGV[4] at most this many dedup keys per call
-- Returns the number of dedup keys dropped (call again while it equals ARGV[4]).
local now = clock(ARGV[1])
local keys = redis.call('ZRANGEBYSCORE', K_DEDUP_AT, '-inf', '(' .. n2s(now - tonumber(ARGV[2])),
  'LIMIT', 0, tonumber(ARGV[4]))
for s = 1, #keys, 500 do
  local e = math.min(s + 499, #keys)
  redis.call('HDEL', K_DEDUP, unpack(keys, s, e))
  redis.call('ZREM', K_DEDUP_AT, unpack(keys, s, e))
end
local cutoff = math.floor((now - tonumber(ARGV[3])) / 60000000)
local old = {}
for _, f in ipairs(redis.call('HKEYS', K_STATS)) do
  local m = tonumber(string.sub(f, 3))
  if m and m < cutoff then old[#old + 1] = f end
end
for s = 1, #old, 500 do
  redis.call('HDEL', K_STATS, unpack(old, s, math.min(s + 499, #old)))
end
return #keys
