-- recurring_claim.lua: claim templates whose next tick is due, not paused,
-- and not held by an unexpired claim; lowest ids first.
-- KEYS[1]: the tag {P} (key names from keys.py); reads K_REC_DUE, K_REC_INDEX,
--       writes K_REC..id.
-- ARGV[1] now (µs) or '' for Redis TIME
-- ARGV[2] server id
-- ARGV[3] claim length (µs)
-- ARGV[4] limit N
-- ARGV[5] N x 32 random hex characters: the claim token of each claim
-- Returns {now, token 1, template 1 fields (flat), token 2, ...}.
local now = clock(ARGV[1])
local server = ARGV[2]
local until_ = n2s(now + tonumber(ARGV[3]))
local limit = tonumber(ARGV[4])
local tokens = ARGV[5]
local out = {now}
local due = redis.call('ZRANGEBYSCORE', K_REC_DUE, '-inf', now)
if #due > limit then
  -- more candidates than the limit: walk them in id order (bytewise, as the
  -- index sorts them; Lua's own string order follows the locale)
  local is_due = {}
  for _, id in ipairs(due) do is_due[id] = true end
  due = {}
  for _, id in ipairs(redis.call('ZRANGE', K_REC_INDEX, 0, -1)) do
    if is_due[id] then due[#due + 1] = id end
  end
end
local got = 0
for _, id in ipairs(due) do
  if got >= limit then break end
  local rk = K_REC .. id
  local t = redis.call('HMGET', rk, 'paused', 'next_run_at', 'claimed_by', 'claim_expires_at')
  if t[1] ~= '1' and t[2] and tonumber(t[2]) <= now
      and not (t[3] and t[4] and tonumber(t[4]) > now) then
    got = got + 1
    local token = string.sub(tokens, got * 32 - 31, got * 32)
    redis.call('HSET', rk, 'claimed_by', server .. '#' .. token, 'claim_expires_at', until_)
    out[#out + 1] = token
    out[#out + 1] = redis.call('HGETALL', rk)
  end
end
return out
