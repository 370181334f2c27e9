-- list.lua: (read only) scan an id index from a cursor and keep the jobs that
-- pass the filters, so a filtered page is found without sending jobs over.
-- KEYS[1]: the tag {P} (key names from keys.py); reads K_ALL or K_STATE..state, K_JOB..id.
-- ARGV[1] index: '' for every job, else a state name
-- ARGV[2] cursor: scan ids after it ('' = from the start)
-- ARGV[3] '1' ascending (oldest first), '0' newest first
-- ARGV[4] want: stop after this many matches
-- ARGV[5] scan at most this many ids in this call
-- ARGV[6] queue|''   ARGV[7] method|''
-- ARGV[8] text|'': lower-case ASCII, matched case-insensitively in the args,
--         the id and the error message
-- ARGV[9..] allowed states ('' index only; none = any)
-- Returns {1 if the index is exhausted else 0, last scanned id|'', match, ...}.
local key = ARGV[1] == '' and K_ALL or (K_STATE .. ARGV[1])
local cursor, asc = ARGV[2], ARGV[3] == '1'
local want, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local queue, method, text = opt(ARGV[6]), opt(ARGV[7]), opt(ARGV[8])
local states = nil
if #ARGV >= 9 then
  states = {}
  for s = 9, #ARGV do states[ARGV[s]] = true end
end
local matches = {}
local scanned = 0
local last = cursor
local chunk = math.min(budget, 500)
while true do
  local ids
  if asc then
    ids = redis.call('ZRANGEBYLEX', key, last ~= '' and ('(' .. last) or '-', '+',
      'LIMIT', 0, chunk)
  else
    ids = redis.call('ZREVRANGEBYLEX', key, last ~= '' and ('(' .. last) or '+', '-',
      'LIMIT', 0, chunk)
  end
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    last = id
    local ok = true
    if queue or method or states or text then
      local st = redis.call('HMGET', K_JOB .. id, 'queue', 'method', 'state')
      ok = (not queue or st[1] == queue) and (not method or st[2] == method)
        and (not states or (st[3] and states[st[3]]))
      if ok and text then
        ok = string.find(string.lower(id), text, 1, true) ~= nil
        if not ok then
          local tx = redis.call('HMGET', K_JOB .. id, 'args', 'error')
          ok = (tx[1] and string.find(string.lower(tx[1]), text, 1, true) ~= nil)
            or (tx[2] and string.find(string.lower(tx[2]), text, 1, true) ~= nil)
        end
      end
    end
    if ok then
      matches[#matches + 1] = id
      if #matches >= want then return {0, last, unpack(matches)} end
    end
    if scanned >= budget then return {0, last, unpack(matches)} end
  end
  if #ids < chunk then return {1, last, unpack(matches)} end
end
