-- _lib.lua: helpers shared by every qml script. scripts.py puts this text in
-- front of each script before loading it, so a loaded script stands alone.
--
-- KEYS[1] is the hash tag {P} of the storage's prefix; the key names K_JOB,
-- K_READY, ... are Lua locals defined in front of this file by keys.py
-- (lua_prelude), which documents the layout. Every key shares the tag, so a
-- script touches one Redis Cluster slot.
-- Times and durations are integer microseconds; '' stands for "none".

local ENQ, SCH, PRO = 'enqueued', 'scheduled', 'processing'
local SUC, FAI, RET, DEL = 'succeeded', 'failed', 'awaiting_retry', 'deleted'
local FINAL = {succeeded = true, failed = true, deleted = true}

-- a number as an integer string (Lua's own tostring keeps only 14 digits).
-- Formatting a number is one of the costliest steps of a script, and a script
-- formats the same few numbers (its time, small counts) for every job it
-- touches: each is formatted once per call (reset() empties the memo). '%d' is
-- used where this Lua formats integers up to 2^53 exactly with it (a 64-bit long):
-- several times cheaper than '%.0f', which glibc computes in multiple precision.
-- (Chosen at the first format: a function library's top level may not use `string`.)
local N_FORMAT, READY_FORMAT  -- the integer, and a ready member's 16-digit time
local function formats()
  local int = string.format('%d', 2 ^ 53) == '9007199254740992'
  N_FORMAT, READY_FORMAT = int and '%d' or '%.0f', int and '%016d' or '%016.0f'
end
local N2S = {}
local function n2s(x)
  local s = N2S[x]
  if s == nil then
    if N_FORMAT == nil then formats() end
    s = x == 0 and '0' or string.format(N_FORMAT, x)  -- never '-0'
    N2S[x] = s
  end
  return s
end

-- '' -> nil
local function opt(s)
  if s == nil or s == false or s == '' then return nil end
  return s
end

-- an explicit time, or the Redis clock (read once per call: a second read
-- returns the first, as a script runs in one instant; reset() forgets it)
local TIME_NOW
local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  if TIME_NOW == nil then
    local t = redis.call('TIME')
    TIME_NOW = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return TIME_NOW
end

local function jstr(s)
  if s == nil or s == false or s == '' then return 'null' end
  return cjson.encode(s)
end

-- Writes to shared structures are collected and applied by flush() at the end
-- of a script: a batch costs one ZADD per key instead of one per job. Every
-- ZREM is applied before every ZADD, which is right because a job changes
-- state at most once per script (each script checks its job's state first).
local B_ZADD, B_ZREM, B_COUNT, B_STAT = {}, {}, {}, {}
-- insert()'s per-call memos: the first history entry of a new job by state
-- (at time NEW_AT); by queue, the B_ZADD lists of its ready, Enqueued-state
-- and all-jobs keys and its Enqueued counter field (flush() forgets them)
local NEW_HISTORY, NEW_AT, NEW_QUEUE = {}, nil, {}

local function push(store, key, a, b)
  local t = store[key]
  if not t then
    t = {}
    store[key] = t
  end
  t[#t + 1] = a
  if b ~= nil then t[#t + 1] = b end
end

-- (a score is an integer: it is sent as text, formatted once per call by n2s)
local function zadd(key, score, member) push(B_ZADD, key, n2s(score), member) end
local function zrem(key, member) push(B_ZREM, key, member) end

-- add delta to the (queue, state) counter
local function count(queue, state, delta)
  local f = state .. ':' .. queue
  B_COUNT[f] = (B_COUNT[f] or 0) + delta
end

local function each_chunk(t, step, fn)
  for s = 1, #t, step do fn(unpack(t, s, math.min(s + step - 1, #t))) end
end

local function flush()
  for key, t in pairs(B_ZREM) do
    each_chunk(t, 1000, function(...) redis.call('ZREM', key, ...) end)
  end
  for key, t in pairs(B_ZADD) do
    each_chunk(t, 1000, function(...) redis.call('ZADD', key, ...) end)
  end
  for f, d in pairs(B_STAT) do redis.call('HINCRBY', K_STATS, f, n2s(d)) end
  for f, d in pairs(B_COUNT) do
    if d ~= 0 and redis.call('HINCRBY', K_COUNTS, f, n2s(d)) == 0 then
      redis.call('HDEL', K_COUNTS, f)
    end
  end
  B_ZADD, B_ZREM, B_COUNT, B_STAT = {}, {}, {}, {}
  NEW_QUEUE = {}  -- it holds lists of B_ZADD
end

-- Per-call state back to empty: a function library keeps its locals between
-- calls (a script run by SHA starts from scratch each time).
local READY_AT = {}
local function reset()
  B_ZADD, B_ZREM, B_COUNT, B_STAT = {}, {}, {}, {}
  N2S, READY_AT, TIME_NOW, NEW_HISTORY, NEW_AT, NEW_QUEUE = {}, {}, nil, {}, nil, {}
end

-- a history entry: [state, at, reason, server, attempt]; the history field
-- holds the entries comma-joined
local function entry(state, now, reason, server, attempt)
  return '["' .. state .. '",' .. n2s(now) .. ',' .. jstr(reason) .. ',' ..
    jstr(server) .. ',' .. n2s(attempt or 0) .. ']'
end

local function append(history, e)
  if history then return history .. ',' .. e end
  return e
end

-- minute statistics: kind 's' (succeeded) or 'f' (failed)
local function add_stat(kind, now)
  local f = kind .. ':' .. n2s(math.floor(now / 60000000))
  B_STAT[f] = (B_STAT[f] or 0) + 1
end

-- Signal "work may be ready": a new generation, published only while some
-- storage waits (a waiter reads the generation as it registers, so nothing
-- signalled before its registration is missed). Returns the generation.
local function wake()
  local g = redis.call('INCR', K_WAKE_GEN)
  if redis.call('ZCOUNT', K_WAITERS, n2s(clock('')), '+inf') > 0 then
    redis.call('PUBLISH', K_WAKE, g)
  end
  return g
end

-- Register a storage as waiting for work until `until_` (µs), dropping the
-- registrations that ended: wake() publishes while any is current.
local function register_waiter(waiter, now, until_)
  redis.call('ZREMRANGEBYSCORE', K_WAITERS, '-inf', '(' .. n2s(now))
  redis.call('ZADD', K_WAITERS, until_, waiter)
end

-- the member of an Enqueued job in its ready zset (score: -priority)
local function ready_member(at, id)
  local p = READY_AT[at]
  if p == nil then
    if READY_FORMAT == nil then formats() end
    p = string.format(READY_FORMAT, at)
    READY_AT[at] = p
  end
  return p .. id
end

-- The first of `ids` (a list) that names a stored job, or nil. K_ALL holds
-- the id of every stored job: one ZMSCORE (Redis 6.2) checks up to 1,000 of
-- them; a server without it checks each job's key.
local function first_stored(ids)
  for s = 1, #ids, 1000 do
    local e = math.min(s + 999, #ids)
    local scores = redis.pcall('ZMSCORE', K_ALL, unpack(ids, s, e))
    if scores.err then
      for k = s, e do
        if redis.call('EXISTS', K_JOB .. ids[k]) == 1 then return ids[k] end
      end
    else
      for k = 1, e - s + 1 do
        if scores[k] then return ids[s + k - 1] end
      end
    end
  end
  return nil
end

-- The first of `fields` (a list) present in hash `key`, or nil: one HMGET for
-- up to 1,000 of them.
local function first_field(key, fields)
  for s = 1, #fields, 1000 do
    local e = math.min(s + 999, #fields)
    local got = redis.call('HMGET', key, unpack(fields, s, e))
    for k = 1, e - s + 1 do
      if got[k] then return fields[s + k - 1] end
    end
  end
  return nil
end

-- What every state change reads from a job hash, in this order.
local READ = {'state', 'queue', 'priority', 'attempts', 'history', 'enqueued_at',
  'lease_token', 'server_id', 'crashes', 'run_at', 'cancel'}
local R_STATE, R_QUEUE, R_PRIO, R_ATTEMPTS, R_HISTORY, R_ENQUEUED = 1, 2, 3, 4, 5, 6
local R_TOKEN, R_SERVER, R_CRASHES, R_RUN_AT, R_CANCEL = 7, 8, 9, 10, 11

local function read(jk)
  return redis.call('HMGET', jk, unpack(READ))
end

-- Move a job read with read() from its state to `new`: the structures its
-- states keep it in, counters, state index and history; `fields` (field,
-- value, ...) are written with it in one HSET. `when` is run_at
-- (Scheduled/AwaitingRetry), the lease deadline (Processing) or expires_at
-- (final; nil: never expires). `place` (Enqueued only) is the enqueued_at the
-- job keeps, its place in the queue; nil stamps `now` (the back of the queue).
local function move(jk, id, st, new, now, reason, server, attempt, when, fields, place)
  local old, queue = st[R_STATE], st[R_QUEUE]
  if old == ENQ then
    if st[R_ENQUEUED] then zrem(K_READY .. queue, ready_member(tonumber(st[R_ENQUEUED]), id)) end
  elseif old == SCH or old == RET then
    zrem(K_DUE, id)
  elseif old == PRO then
    zrem(K_LEASES, id)
  else
    zrem(K_EXPIRY, id)
  end
  count(queue, old, -1)
  count(queue, new, 1)
  zrem(K_STATE .. old, id)
  zadd(K_STATE .. new, 0, id)
  local n = #fields
  fields[n + 1] = 'state'
  fields[n + 2] = new
  fields[n + 3] = 'updated_at'
  fields[n + 4] = n2s(now)
  fields[n + 5] = 'history'
  fields[n + 6] = append(st[R_HISTORY], entry(new, now, reason, server, attempt))
  if new == ENQ then
    local at = place or now
    fields[n + 7] = 'enqueued_at'
    fields[n + 8] = n2s(at)
    zadd(K_READY .. queue, -tonumber(st[R_PRIO]), ready_member(at, id))
  elseif new == SCH or new == RET then
    zadd(K_DUE, when, id)
  elseif new == PRO then
    zadd(K_LEASES, when, id)
  elseif when then
    zadd(K_EXPIRY, when, id)
  end
  redis.call('HSET', jk, unpack(fields))
end

-- Read one new job from ARGV starting at position i:
--   id, queue, priority, run_at|'', dedup_key|'', n, n x (field, value)
-- Returns the record and the position after it.
local function read_job(i)
  local n = tonumber(ARGV[i + 5])
  local rec = {
    id = ARGV[i], queue = ARGV[i + 1], priority = ARGV[i + 2],
    run_at = opt(ARGV[i + 3]), dedup = opt(ARGV[i + 4]), first = i + 6, n = n,
  }
  return rec, i + 6 + 2 * n
end

-- Store a new job (call flush() afterwards): Scheduled if run_at is after
-- `now`, else Enqueued; or, given `claim` ({server, token, deadline}), an
-- Enqueued job goes straight on to Processing under that claim, as a claim
-- would move it (see hand_new). Returns its fields (field, value, ...), or nil
-- for a job of the common shape (Enqueued, method and args only, no claim),
-- which is written without building them: a batch's cost is mostly per job.
local function insert(rec, now, claim)
  local id, queue = rec.id, rec.queue
  local state, reason = ENQ, 'enqueued'
  local run_at = rec.run_at and tonumber(rec.run_at)
  if run_at and run_at > now then state, reason = SCH, 'scheduled' end
  local snow = n2s(now)
  if NEW_AT ~= now then NEW_HISTORY, NEW_AT = {}, now end
  local history = NEW_HISTORY[state]
  if history == nil then
    history = '["' .. state .. '",' .. snow .. ',"' .. reason .. '",null,0]'
    NEW_HISTORY[state] = history
  end
  if state == ENQ and not claim and rec.n == 2 and not run_at and not rec.dedup then
    -- the common shape: the HSET takes its fields directly; the rest goes
    -- straight to the lists flush() writes (as zadd() and count() would)
    local a = rec.first
    local q = NEW_QUEUE[queue]
    if q == nil then
      local rk, sk = K_READY .. queue, K_STATE .. ENQ
      for _, k in ipairs({rk, sk, K_ALL}) do
        if B_ZADD[k] == nil then B_ZADD[k] = {} end
      end
      q = {ready = B_ZADD[rk], state = B_ZADD[sk], all = B_ZADD[K_ALL],
        count = ENQ .. ':' .. queue}
      NEW_QUEUE[queue] = q
    end
    local t = q.ready
    local n = #t
    t[n + 1], t[n + 2] = n2s(-tonumber(rec.priority)), ready_member(now, id)
    redis.call('HSET', K_JOB .. id, 'id', id, 'queue', queue, 'priority', rec.priority,
      'state', ENQ, 'attempts', '0', 'crashes', '0', 'created_at', snow, 'updated_at', snow,
      'history', history, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], 'enqueued_at', snow)
    t = q.all
    n = #t
    t[n + 1], t[n + 2] = '0', id
    t = q.state
    n = #t
    t[n + 1], t[n + 2] = '0', id
    B_COUNT[q.count] = (B_COUNT[q.count] or 0) + 1
    return nil
  end
  local attempts = '0'
  if claim and state == ENQ then  -- enqueued, then claimed at once
    history = append(history, entry(PRO, now, nil, claim.server, 1))
    state, attempts = PRO, '1'
  else
    claim = nil
  end
  local fields = {'id', id, 'queue', queue, 'priority', rec.priority, 'state', state,
    'attempts', attempts, 'crashes', '0', 'created_at', snow, 'updated_at', snow,
    'history', history}
  for a = rec.first, rec.first + 2 * rec.n - 1 do fields[#fields + 1] = ARGV[a] end
  if rec.run_at then
    fields[#fields + 1] = 'run_at'
    fields[#fields + 1] = rec.run_at
  end
  if rec.dedup then
    fields[#fields + 1] = 'dedup_key'
    fields[#fields + 1] = rec.dedup
    redis.call('HSET', K_DEDUP, rec.dedup, id)
    zadd(K_DEDUP_AT, now, rec.dedup)
  end
  if state == SCH then
    zadd(K_DUE, run_at, id)
  else
    fields[#fields + 1] = 'enqueued_at'
    fields[#fields + 1] = snow
    if claim then
      local n = #fields
      fields[n + 1], fields[n + 2] = 'started_at', snow
      fields[n + 3], fields[n + 4] = 'server_id', claim.server
      fields[n + 5], fields[n + 6] = 'lease_token', claim.token
      fields[n + 7], fields[n + 8] = 'lease_expires_at', n2s(claim.deadline)
      zadd(K_LEASES, claim.deadline, id)
    else
      zadd(K_READY .. queue, -tonumber(rec.priority), ready_member(now, id))
    end
  end
  redis.call('HSET', K_JOB .. id, unpack(fields))
  zadd(K_ALL, 0, id)
  zadd(K_STATE .. state, 0, id)
  count(queue, state, 1)
  return fields
end

-- The fields of a claimed job returned to the client, in the order of
-- codec.JOB_FIELDS.
local JOB_FIELDS = {'method', 'args', 'queue', 'priority', 'max_retries', 'run_at', 'timeout',
  'dedup_key', 'meta', 'id', 'state', 'attempts', 'crashes', 'created_at', 'updated_at',
  'enqueued_at', 'started_at', 'finished_at', 'expires_at', 'error_type', 'error', 'traceback',
  'result', 'server_id', 'lease_token', 'lease_expires_at', 'cancel', 'progress', 'history'}
local MAX_PASSED = 1000

-- Claim up to `limit` Enqueued jobs for `server` until `deadline` (call
-- flush() afterwards). `tokens`: limit x 32 hex characters, the fencing token
-- of each claimed job in turn. `suspects`: how many suspects (jobs with at
-- least `suspect_crashes` crashes) it may take, nil for any. `queues` are
-- taken in order (paused ones skipped); inside a queue by priority desc, then
-- enqueued_at, then id (the ready member order). Suspects beyond the bound are
-- passed over and put back with their score (they keep their place); at most
-- MAX_PASSED per call, then the queue is left. Appends each claimed job's
-- JOB_FIELDS values to `out` and returns how many it claimed.
local function claim_jobs(out, now, server, deadline, limit, tokens, suspects, suspect_crashes,
                          queues)
  local got = 0
  local snow, sdeadline = n2s(now), n2s(deadline)
  for _, queue in ipairs(queues) do
    if got >= limit then break end
    if redis.call('SISMEMBER', K_PAUSED, queue) == 0 then
      local rk = K_READY .. queue
      local passed = {}  -- score, member, ... of the suspects passed over
      while got < limit and #passed < 2 * MAX_PASSED do
        local popped = redis.call('ZPOPMIN', rk, n2s(limit - got))
        if #popped == 0 then break end
        for p = 1, #popped, 2 do
          local id = string.sub(popped[p], 17)
          local jk = K_JOB .. id
          local st = redis.call('HMGET', jk, 'state', 'attempts', 'queue', 'history', 'crashes')
          local take = st[1] == ENQ and st[3] == queue
          if take and suspects ~= nil and tonumber(st[5] or '0') >= suspect_crashes then
            if suspects > 0 then
              suspects = suspects - 1
            else
              take = false
              passed[#passed + 1] = popped[p + 1]
              passed[#passed + 1] = popped[p]
            end
          end
          if take then
            got = got + 1
            local attempts = tonumber(st[2]) + 1
            redis.call('HSET', jk, 'state', PRO, 'attempts', n2s(attempts), 'started_at', snow,
              'updated_at', snow, 'server_id', server,
              'lease_token', string.sub(tokens, got * 32 - 31, got * 32),
              'lease_expires_at', sdeadline,
              'history', append(st[4], entry(PRO, now, nil, server, attempts)))
            zadd(K_LEASES, deadline, id)
            zrem(K_STATE .. ENQ, id)
            zadd(K_STATE .. PRO, 0, id)
            count(queue, ENQ, -1)
            count(queue, PRO, 1)
            out[#out + 1] = redis.call('HMGET', jk, unpack(JOB_FIELDS))
          end
        end
      end
      if #passed > 0 then redis.call('ZADD', rk, unpack(passed)) end
    end
  end
  return got
end

-- Hand-off to parked waiters. A storage that found nothing to claim parks:
-- its claim request waits in K_PARKED (JSON, see park.lua) and its park id in
-- K_PARK..queue for each of its queues, scored by the end of its parking. A
-- script that makes jobs of `queue` ready calls hand_off (after flush()): it
-- claims for the longest-parked waiter exactly as claim_jobs would for that
-- request, ends its parking and pushes the claim to its list K_HAND..id, on
-- which the waiter blocks; a waiter that ended its parking itself finds ''.
-- Call flush() afterwards. Returns true when the queue's ready jobs were all
-- taken (nobody else needs a wake-up for them).
local MAX_HAND_OFFS = 16
local HAND_TTL_MS = 600000  -- a list whose waiter died goes away by itself

local function unpark(id, request)
  redis.call('HDEL', K_PARKED, id)
  for _, q in ipairs(request.queues) do redis.call('ZREM', K_PARK .. q, id) end
end

-- The longest-parked live waiter on `queue`: its park id and request, or nil.
-- Parkings that are over (or whose waiter died) are dropped on the way, at most
-- MAX_HAND_OFFS of them.
local function next_parked(queue, now)
  local pk = K_PARK .. queue
  for _ = 1, MAX_HAND_OFFS do
    local first = redis.call('ZRANGE', pk, '0', '0', 'WITHSCORES')
    if #first == 0 then return nil end
    local id = first[1]
    local raw = redis.call('HGET', K_PARKED, id)
    if raw and tonumber(first[2]) > now then return id, cjson.decode(raw) end
    redis.call('ZREM', pk, id)
    if raw then unpark(id, cjson.decode(raw)) end
  end
  return nil
end

-- End waiter `id`'s parking (its request `r`) and push it the claim `out`.
local function hand_over(id, r, out)
  unpark(id, r)
  local hk = K_HAND .. id
  redis.call('RPUSH', hk, cjson.encode(out))
  redis.call('PEXPIRE', hk, HAND_TTL_MS)
end

local function hand_off(queue, now)
  for _ = 1, MAX_HAND_OFFS do
    local id, r = next_parked(queue, now)
    if not id then return false end
    local deadline = now + r.lease
    local out = {n2s(now), n2s(deadline)}  -- as text: cjson keeps 14 digits
    local suspects = r.suspects
    if suspects < 0 then suspects = nil end
    if claim_jobs(out, now, r.server, deadline, r.limit, r.tokens, suspects, r.crashes,
                  r.queues) == 0 then
      return false  -- nothing it may take (a paused queue, suspects): it stays parked
    end
    hand_over(id, r, out)
    if redis.call('ZCARD', K_READY .. queue) == 0 then return true end
  end
  return false
end

-- The hand-off of one new job, without the ready set: when `rec` (Enqueued, read
-- by read_job) is for a queue a server is parked on, neither that queue nor one
-- the server takes first (an earlier one of its queues, not paused) has a ready
-- job, and the queue is not paused, the job is stored straight as Processing
-- under the parked request's claim (its first token, its lease) and that claim
-- is pushed to the waiter, with the job's values built here rather than read
-- back. The stored job, counters and indexes are those insert() and a claim by
-- hand_off would leave.
-- A new job has no crashes, so it is never a suspect. Returns 'handed' (call
-- flush() afterwards); else the job is not stored: 'nobody' (no live server is
-- parked on the queue: insert() it, no hand-off to try) or 'usual' (insert() it
-- and try hand_off, which claims in queue order).
local function hand_new(rec, now)
  local queue = rec.queue
  local id, r = next_parked(queue, now)
  if not id then return 'nobody' end
  for _, q in ipairs(r.queues) do  -- a claim takes its queues in order
    if redis.call('ZCARD', K_READY .. q) > 0
      and (q == queue or redis.call('SISMEMBER', K_PAUSED, q) == 0) then
      return 'usual'  -- jobs it would claim first
    end
    if q == queue then break end
  end
  if redis.call('SISMEMBER', K_PAUSED, queue) == 1 then
    return 'usual'  -- none may be claimed: it stays parked
  end
  local deadline = now + r.lease
  local fields = insert(rec, now,
    {server = r.server, token = string.sub(r.tokens, 1, 32), deadline = deadline})
  local h = {}
  for k = 1, #fields, 2 do h[fields[k]] = fields[k + 1] end
  local row = {}
  for k = 1, #JOB_FIELDS do row[k] = h[JOB_FIELDS[k]] or false end
  hand_over(id, r, {n2s(now), n2s(deadline), row})
  return 'handed'
end

-- ------------------------------------------------------------------ script
