-- The rolling budget ledger under one hash tag: reserve, settle, snapshot.
--
-- ledger.py is the only caller and documents the key layout and the semantics; this file is
-- loaded once per server with SCRIPT LOAD and run with EVALSHA.
--
-- Calling convention (every operation):
--   KEYS:    6 keys per scope, in scope order:
--            totals (hash), buckets (hash), bucket_starts (zset),
--            reservations (hash), reservation_expiry (zset), settled (zset)
--   ARGV[1]: operation: "reserve" | "settle" | "snapshot"
--   ARGV[2]: window seconds W     ARGV[3]: bucket seconds B     ARGV[4]: number of scopes N
--   ARGV[5..]: the operation's own arguments (see each operation below)
--
-- Every number that goes back into redis.call is formatted with I() ("%d"): Lua numbers are
-- doubles and tostring() would turn 1e15 into "1e+15", which HINCRBY rejects. All values stay
-- below 2^53, so doubles hold them exactly. Every number read from Redis goes through clamp():
-- an integer in [0, 2^53 - 1], whatever was (or was not) stored.

local op = ARGV[1]
local W = tonumber(ARGV[2])
local B = tonumber(ARGV[3])
local N = tonumber(ARGV[4])

local KEYS_PER_SCOPE = 6
local TTL_MARGIN_MS = 60000
local TOMBSTONE_MS = 600000
local MAX_AMOUNT = 9007199254740991

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- A bucket [b, b+B) counts until its whole span is older than the window: it leaves at
-- (b + B + W) seconds. Spend therefore counts for at least W and at most W + B seconds.
-- Buckets with start <= cutoff have left the window.
local cutoff = math.floor((now_ms - (W + B) * 1000) / 1000)

local SUFFIX = { ':tokens', ':usd' }
local TOTAL_FIELDS = { 'used_tokens', 'used_usd', 'reserved_tokens', 'reserved_usd' }

local function I(n)
  return string.format('%d', n)
end

-- Any reply (a string, false for a missing field, nil) -> an integer in [0, MAX_AMOUNT].
local function clamp(value)
  local n = tonumber(value)
  if n == nil or n ~= n or n <= 0 then
    return 0
  end
  if n > MAX_AMOUNT then
    return MAX_AMOUNT
  end
  return math.floor(n)
end

-- Is `value` (a reply) exactly what clamp() makes of it, written by I()?
local function canonical(value)
  return type(value) == 'string' and value == I(clamp(value))
end

local function bucket_of(ms)
  return math.floor(ms / (B * 1000)) * B
end

local function leaves_ms(b)
  return (b + B + W) * 1000
end

local function seconds_from_now(ms)
  local s = math.ceil((ms - now_ms) / 1000)
  if s < 1 then
    s = 1
  end
  return s
end

local scopes = {}
for i = 1, N do
  local base = (i - 1) * KEYS_PER_SCOPE
  scopes[i] = {
    totals = KEYS[base + 1],
    buckets = KEYS[base + 2],
    starts = KEYS[base + 3],
    res = KEYS[base + 4],
    resexp = KEYS[base + 5],
    settled = KEYS[base + 6],
  }
end

-- dirty[i]: a key of scope i was written, so every key of it gets its expiry again.
-- state[i]: the running totals of scope i, read once, kept here while the script changes them
-- and written back once (HSET) by finish() when state[i].changed.
local dirty = {}
local state = {}

local function parse_record(record)
  local tokens, usd = string.match(record or '', '^(%d+) (%d+)$')
  return clamp(tokens), clamp(usd)
end

local function set_used(i, kind, value)
  state[i].used[kind] = math.max(0, value)
  state[i].changed = true
  dirty[i] = true
end

local function set_reserved(i, kind, value)
  state[i].reserved[kind] = math.max(0, value)
  state[i].changed = true
  dirty[i] = true
end

-- Rebuild the running totals of scope i from what they sum up: the buckets (re-indexing every
-- bucket in bucket_starts) and the outstanding reservations. Run when the totals are missing
-- (evicted, deleted, or a scope never written) or hold something that is not a clamped integer.
local function rebuild(i)
  local k = scopes[i]
  local s = state[i]
  local used = { 0, 0 }
  local reserved = { 0, 0 }
  local fields = redis.call('HGETALL', k.buckets)
  for j = 1, #fields, 2 do
    local b, suffix = string.match(fields[j], '^(%d+)(:%a+)$')
    local amount = clamp(fields[j + 1])
    for kind = 1, 2 do
      if b and suffix == SUFFIX[kind] and amount > 0 then
        used[kind] = used[kind] + amount
        redis.call('ZADD', k.starts, b, b)
        dirty[i] = true
      end
    end
  end
  local records = redis.call('HGETALL', k.res)
  for j = 1, #records, 2 do
    local tokens, usd = parse_record(records[j + 1])
    reserved[1] = reserved[1] + tokens
    reserved[2] = reserved[2] + usd
  end
  s.used = used
  s.reserved = reserved
  if used[1] + used[2] + reserved[1] + reserved[2] > 0 or s.invalid then
    s.changed = true
    dirty[i] = true
  end
end

local function load(i)
  local raw = redis.call('HMGET', scopes[i].totals, 'used_tokens', 'used_usd',
    'reserved_tokens', 'reserved_usd', 'limits')
  local s = {
    used = { clamp(raw[1]), clamp(raw[2]) },
    reserved = { clamp(raw[3]), clamp(raw[4]) },
    limits = raw[5] or nil,
    changed = false,
  }
  state[i] = s
  local missing = not (raw[1] or raw[2] or raw[3] or raw[4])
  for j = 1, 4 do
    if raw[j] and not canonical(raw[j]) then
      s.invalid = true
    end
  end
  if missing or s.invalid then
    rebuild(i)
  end
end

-- Charge spend into bucket b of scope i. Spend in a bucket that has already left the window
-- would count for nothing and is dropped.
local function charge(i, b, tokens, usd)
  if b <= cutoff then
    return
  end
  local k = scopes[i]
  local amounts = { tokens, usd }
  local charged = false
  for kind = 1, 2 do
    local amount = amounts[kind]
    if amount > 0 then
      redis.call('HINCRBY', k.buckets, I(b) .. SUFFIX[kind], I(amount))
      set_used(i, kind, state[i].used[kind] + amount)
      charged = true
    end
  end
  if charged then
    redis.call('ZADD', k.starts, I(b), I(b))
  end
end

local function release(i, tokens, usd)
  set_reserved(i, 1, state[i].reserved[1] - tokens)
  set_reserved(i, 2, state[i].reserved[2] - usd)
end

-- Keep a tombstone of reservation `id` in scope i until `until_ms`: a settle of it, or a
-- reserve of the same id, finds it and does nothing.
local function tombstone(i, id, until_ms)
  redis.call('ZADD', scopes[i].settled, I(until_ms), id)
  dirty[i] = true
end

-- Remove the reservation `id` from scope i; returns its amounts and expiry (ms), or nil when
-- its record is not there.
local function take_reservation(i, id)
  local k = scopes[i]
  local record = redis.call('HGET', k.res, id)
  local expires = redis.call('ZSCORE', k.resexp, id)
  if expires then
    redis.call('ZREM', k.resexp, id)
    dirty[i] = true
  end
  if not record then
    return nil
  end
  local tokens, usd = parse_record(record)
  redis.call('HDEL', k.res, id)
  release(i, tokens, usd)
  return tokens, usd, clamp(expires)
end

-- Buckets that have left the window are subtracted from the running totals and deleted.
local function sweep_buckets(i)
  local k = scopes[i]
  local old = redis.call('ZRANGEBYSCORE', k.starts, '-inf', I(cutoff))
  if #old == 0 then
    return
  end
  for _, b in ipairs(old) do
    local fields = { b .. SUFFIX[1], b .. SUFFIX[2] }
    local amounts = redis.call('HMGET', k.buckets, fields[1], fields[2])
    for kind = 1, 2 do
      local amount = clamp(amounts[kind])
      if amount > 0 then
        set_used(i, kind, state[i].used[kind] - amount)
      end
    end
    if amounts[1] or amounts[2] then
      redis.call('HDEL', k.buckets, fields[1], fields[2])
    end
  end
  redis.call('ZREMRANGEBYSCORE', k.starts, '-inf', I(cutoff))
  dirty[i] = true
end

-- Incremental expiry of scope i, run first by every operation:
-- 1. every reservation whose expiry is due becomes a charge of its full reserved amounts,
--    recorded in the bucket of its expiry time (so the result does not depend on which later
--    call happens to sweep it, and is the same in every scope of the reservation), and leaves
--    a tombstone;
-- 2. every bucket that has left the window is subtracted from the running totals and deleted;
-- 3. tombstones past their time are deleted.
local function sweep(i)
  local k = scopes[i]
  local due = redis.call('ZRANGEBYSCORE', k.resexp, '-inf', I(now_ms), 'WITHSCORES')
  for j = 1, #due, 2 do
    local id = due[j]
    local expires_ms = clamp(due[j + 1])
    local tokens, usd = take_reservation(i, id)
    if tokens then
      charge(i, bucket_of(expires_ms), tokens, usd)
    end
    tombstone(i, id, now_ms + TOMBSTONE_MS)
  end
  sweep_buckets(i)
  redis.call('ZREMRANGEBYSCORE', k.settled, '-inf', I(now_ms))
end

-- Totals that outlived what they sum up (a key evicted or deleted by hand) heal here:
-- used spend with no bucket left is zero; buckets without their index are indexed again;
-- reserved amounts with no reservation left are zero; reservation records without an expiry
-- are charged in full now (as if they had expired).
local function heal(i)
  local k = scopes[i]
  local s = state[i]
  if s.used[1] + s.used[2] > 0 and redis.call('ZCARD', k.starts) == 0 then
    local fields = redis.call('HKEYS', k.buckets)
    if #fields == 0 then
      set_used(i, 1, 0)
      set_used(i, 2, 0)
    else
      for _, field in ipairs(fields) do
        local b = string.match(field, '^(%d+):')
        if b then
          redis.call('ZADD', k.starts, b, b)
        end
      end
      sweep_buckets(i)
    end
  end
  if s.reserved[1] + s.reserved[2] > 0 and redis.call('ZCARD', k.resexp) == 0 then
    local records = redis.call('HKEYS', k.res)
    if #records == 0 then
      set_reserved(i, 1, 0)
      set_reserved(i, 2, 0)
    else
      for _, id in ipairs(records) do
        local tokens, usd = take_reservation(i, id)
        if tokens then
          charge(i, bucket_of(now_ms), tokens, usd)
        end
        tombstone(i, id, now_ms + TOMBSTONE_MS)
      end
    end
  end
end

-- Every key of a written scope expires together, a little after the last thing in it could
-- still count: the newest bucket leaves the window at most W + B after now, and a reservation
-- is charged at its expiry into a bucket that leaves W + B after that.
local function refresh_ttl(i)
  local k = scopes[i]
  local last = now_ms
  local latest = redis.call('ZRANGE', k.resexp, -1, -1, 'WITHSCORES')
  if #latest == 2 and tonumber(latest[2]) > last then
    last = tonumber(latest[2])
  end
  local at = I(last + (W + B) * 1000 + TTL_MARGIN_MS)
  redis.call('PEXPIREAT', k.totals, at)
  redis.call('PEXPIREAT', k.buckets, at)
  redis.call('PEXPIREAT', k.starts, at)
  redis.call('PEXPIREAT', k.res, at)
  redis.call('PEXPIREAT', k.resexp, at)
  redis.call('PEXPIREAT', k.settled, at)
end

local function finish(reply)
  for i = 1, N do
    local s = state[i]
    if s.changed then
      redis.call('HSET', scopes[i].totals,
        TOTAL_FIELDS[1], I(s.used[1]), TOTAL_FIELDS[2], I(s.used[2]),
        TOTAL_FIELDS[3], I(s.reserved[1]), TOTAL_FIELDS[4], I(s.reserved[2]))
    end
    if dirty[i] then
      refresh_ttl(i)
    end
  end
  return reply
end

-- The stored limits "<tokens or -> <usd or ->" -> tokens, usd (-1 = unlimited); nil, nil when
-- there are none (or they are unreadable).
local function parse_limits(stored)
  if not stored then
    return nil, nil
  end
  local tokens, usd = string.match(stored, '^([%d-]+) ([%d-]+)$')
  if not tokens then
    return nil, nil
  end
  local function one(text)
    if text == '-' then
      return -1
    end
    return clamp(text)
  end
  return one(tokens), one(usd)
end

-- Walk the buckets of scope i oldest first, a chunk at a time, calling visit(start, amount of
-- kind) until it returns a value, which walk returns (nil when the buckets run out). Usually the
-- answer is in the first chunk; the worst case (a full day of 1440 buckets) costs ~1.5 ms.
local WALK_CHUNK = 32
local function walk(i, kind, visit)
  local k = scopes[i]
  local offset = 0
  while true do
    local starts = redis.call('ZRANGE', k.starts, offset, offset + WALK_CHUNK - 1)
    if #starts == 0 then
      return nil
    end
    local fields = {}
    for j, b in ipairs(starts) do
      fields[j] = b .. SUFFIX[kind]
    end
    local amounts = redis.call('HMGET', k.buckets, unpack(fields))
    for j, b in ipairs(starts) do
      local result = visit(tonumber(b), clamp(amounts[j]))
      if result ~= nil then
        return result
      end
    end
    if #starts < WALK_CHUNK then
      return nil
    end
    offset = offset + WALK_CHUNK
  end
end

-- Absolute ms at which at least `need` of kind has left the window (walking the buckets oldest
-- first); nil when the buckets do not hold that much.
local function ages_out_ms(i, kind, need)
  local freed = 0
  return walk(i, kind, function(start, amount)
    freed = freed + amount
    if amount > 0 and freed >= need then
      return leaves_ms(start)
    end
    return nil
  end)
end

-- The earliest expiry of an outstanding reservation of scope i (absolute ms), or nil.
local function earliest_reservation_ms(i)
  local first = redis.call('ZRANGE', scopes[i].resexp, 0, 0, 'WITHSCORES')
  if #first == 2 then
    return clamp(first[2])
  end
  return nil
end

-- Seconds until a refused request of `requested` could fit; -1 with never_fits = 1 when the
-- request alone is over the limit. See ledger.py ("retry_after") for the rules.
local function retry_after(i, kind, limit, used, reserved, requested)
  if requested > limit then
    return -1, 1
  end
  local need = used + reserved + requested - limit
  local age_ms = nil
  if need <= used then
    age_ms = ages_out_ms(i, kind, need)
  end
  local res_ms = earliest_reservation_ms(i)
  local at = nil
  if used + requested <= limit and res_ms then
    -- blocked only by outstanding reservations: the earliest of "one resolves" and "enough
    -- spend ages out"
    at = res_ms
    if age_ms and age_ms < at then
      at = age_ms
    end
  elseif age_ms then
    at = age_ms
  else
    -- neither alone is enough: every used bucket must age out and reservations must resolve
    at = now_ms
    local all = ages_out_ms(i, kind, used)
    if all and all > at then
      at = all
    end
    if res_ms and res_ms > at then
      at = res_ms
    end
  end
  if at == nil then
    at = now_ms + (W + B) * 1000
  end
  return seconds_from_now(at), 0
end

-- Seconds until the oldest bucket holding spend of kind leaves the window; -1 when none.
local function seconds_until_free(i, kind)
  local at = walk(i, kind, function(start, amount)
    if amount > 0 then
      return leaves_ms(start)
    end
    return nil
  end)
  if at == nil then
    return -1
  end
  return seconds_from_now(at)
end

for i = 1, N do
  load(i)
  sweep(i)
  heal(i)
end

if op == 'reserve' then
  -- ARGV[5] id, [6] tokens, [7] usd ('' = the call has no price), [8] ttl ms, then per scope:
  -- token limit, usd limit ('' = none given), fixed ('1': the first limits given are stored
  -- and enforced from then on).
  -- Reply: {1, expires_ms} reserved (or already reserved under this id), or
  --        {0, scope index, kind (1 tokens, 2 usd), limit, used, reserved, requested,
  --         retry_after seconds (-1 = none), never_fits (0/1)} over budget, or
  --        {2, scope index, stored token limit, stored usd limit (-1 = none)} limit mismatch, or
  --        {3, scope index} no price but a usd limit, or
  --        {4} the id has a tombstone: it was settled already; nothing reserved.
  local id = ARGV[5]
  local unpriced = ARGV[7] == ''
  local requested = { clamp(ARGV[6]), clamp(ARGV[7]) }
  local ttl_ms = tonumber(ARGV[8])

  -- A reserve sent twice (its reply lost) must not reserve twice, nor after the reservation
  -- was settled (a late copy, or a settle of an id whose reserve had not landed yet).
  local existing = redis.call('ZSCORE', scopes[1].resexp, id)
  if existing then
    return finish({ 1, clamp(existing) })
  end
  for i = 1, N do
    if redis.call('ZSCORE', scopes[i].settled, id) then
      return finish({ 4 })
    end
  end

  -- The limits each scope enforces: the given ones, or for a fixed scope the stored ones.
  local limits = {}
  local store = {}
  for i = 1, N do
    local base = 8 + (i - 1) * 3
    local given = { ARGV[base + 1], ARGV[base + 2] }
    limits[i] = { given[1] ~= '' and tonumber(given[1]) or nil,
      given[2] ~= '' and tonumber(given[2]) or nil }
    if ARGV[base + 3] == '1' then
      local named = given[1] ~= '' or given[2] ~= ''
      local text = (given[1] ~= '' and given[1] or '-') .. ' ' .. (given[2] ~= '' and given[2] or '-')
      local stored_tokens, stored_usd = parse_limits(state[i].limits)
      if stored_tokens ~= nil then
        if named and text ~= state[i].limits then
          return finish({ 2, i, stored_tokens, stored_usd })
        end
        limits[i] = { stored_tokens >= 0 and stored_tokens or nil,
          stored_usd >= 0 and stored_usd or nil }
      elseif named then
        store[i] = text
      end
    end
  end
  for i, text in pairs(store) do
    redis.call('HSET', scopes[i].totals, 'limits', text)
    dirty[i] = true
  end

  if unpriced then
    for i = 1, N do
      if limits[i][2] ~= nil then
        return finish({ 3, i })
      end
    end
  end

  local worst = nil
  for i = 1, N do
    local used, reserved = state[i].used, state[i].reserved
    for kind = 1, 2 do
      local limit = limits[i][kind]
      if limit ~= nil and used[kind] + reserved[kind] + requested[kind] > limit then
        local after, never = retry_after(i, kind, limit, used[kind], reserved[kind],
          requested[kind])
        -- report the refusal that lasts longest: never_fits, then the largest retry_after
        local rank = never == 1 and math.huge or after
        if worst == nil or rank > worst.rank then
          worst = {
            rank = rank,
            reply = { 0, i, kind, limit, used[kind], reserved[kind], requested[kind], after,
              never },
          }
        end
      end
    end
  end
  if worst then
    return finish(worst.reply)
  end

  local expires_ms = now_ms + ttl_ms
  local record = I(requested[1]) .. ' ' .. I(requested[2])
  for i = 1, N do
    local k = scopes[i]
    set_reserved(i, 1, state[i].reserved[1] + requested[1])
    set_reserved(i, 2, state[i].reserved[2] + requested[2])
    redis.call('HSET', k.res, id, record)
    redis.call('ZADD', k.resexp, I(expires_ms), id)
  end
  return finish({ 1, expires_ms })
elseif op == 'settle' then
  -- ARGV[5] id, [6] actual tokens, [7] actual usd.
  -- Reply: {1} settled; {2} already settled (a tombstone: settled before, or expired and
  -- charged in full by a sweep); {3} neither the reservation nor a tombstone was there (the
  -- reservation was lost): the actual usage was charged anyway.
  local id = ARGV[5]
  local tokens = clamp(ARGV[6])
  local usd = clamp(ARGV[7])
  local found, already, lost = false, false, false
  local b = bucket_of(now_ms)
  for i = 1, N do
    local _, _, expires_ms = take_reservation(i, id)
    if expires_ms then
      charge(i, b, tokens, usd)
      tombstone(i, id, math.max(now_ms, expires_ms) + TOMBSTONE_MS)
      found = true
    elseif redis.call('ZSCORE', scopes[i].settled, id) then
      already = true
    else
      charge(i, b, tokens, usd)
      tombstone(i, id, now_ms + TOMBSTONE_MS)
      lost = true
    end
  end
  if found then
    return finish({ 1 })
  elseif lost then
    return finish({ 3 })
  end
  return finish({ 2 })
elseif op == 'snapshot' then
  -- Reply: per scope: used tokens, used usd, reserved tokens, reserved usd,
  -- seconds_until_free tokens, seconds_until_free usd (-1 = nothing used),
  -- limits stored (0/1), stored token limit, stored usd limit (-1 = none).
  local reply = {}
  for i = 1, N do
    local s = state[i]
    for _, value in ipairs({ s.used[1], s.used[2], s.reserved[1], s.reserved[2] }) do
      reply[#reply + 1] = value
    end
    for kind = 1, 2 do
      if s.used[kind] > 0 then
        reply[#reply + 1] = seconds_until_free(i, kind)
      else
        reply[#reply + 1] = -1
      end
    end
    local stored_tokens, stored_usd = parse_limits(s.limits)
    if stored_tokens ~= nil then
      reply[#reply + 1] = 1
      reply[#reply + 1] = stored_tokens
      reply[#reply + 1] = stored_usd
    else
      reply[#reply + 1] = 0
      reply[#reply + 1] = -1
      reply[#reply + 1] = -1
    end
  end
  return finish(reply)
end

return redis.error_reply('kubeagents ledger: unknown operation ' .. tostring(op))
