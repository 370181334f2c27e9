-- oldest.lua: (read only) the earliest enqueued_at among each queue's Enqueued jobs.
-- KEYS[1]: the tag {P} (key names from keys.py); reads K_READY..queue.
-- ARGV[1..] queue names
-- The first member of each priority band holds the band's earliest
-- enqueued_at (members start with it), so only band heads are read.
-- Returns {queue, enqueued_at, ...} for the queues holding Enqueued jobs.
local out = {}
for _, queue in ipairs(ARGV) do
  local rk = K_READY .. queue
  local best = nil
  local head = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
  local bands = 0
  while head[1] and bands < 1000 do
    local at = tonumber(string.sub(head[1], 1, 16))
    if not best or at < best then best = at end
    bands = bands + 1
    head = redis.call('ZRANGEBYSCORE', rk, '(' .. head[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  end
  if best then
    out[#out + 1] = queue
    out[#out + 1] = n2s(best)
  end
end
return out
