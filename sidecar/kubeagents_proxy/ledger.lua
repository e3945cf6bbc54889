-- The rolling budget ledger of one agent: reserve, settle, extend, snapshot.
--
-- ledger.py is the only caller and documents the key layout and the semantics; this file is
-- loaded once per server with SCRIPT LOAD and run with EVALSHA.
--
-- Calling convention (every operation):
--   KEYS:    5 keys per scope, in scope order:
--            totals (hash), buckets (hash), bucket_starts (zset),
--            reservations (hash), reservation_expiry (zset)
--   ARGV[1]: operation: "reserve" | "settle" | "extend" | "snapshot"
--   ARGV[2]: window seconds W     ARGV[3]: bucket seconds B     ARGV[4]: number of scopes N
--   ARGV[5..]: the operation's own arguments (see each operation below)
--
-- Every number that goes back into redis.call is formatted with I() ("%d"): Lua numbers are
-- doubles and tostring() would turn 1e15 into "1e+15", which HINCRBY rejects. All values stay
-- below 2^53, so doubles hold them exactly.

local op = ARGV[1]
local W = tonumber(ARGV[2])
local B = tonumber(ARGV[3])
local N = tonumber(ARGV[4])

local KEYS_PER_SCOPE = 5
local TTL_MARGIN_MS = 60000

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- A bucket [b, b+B) counts until its whole span is older than the window: it leaves at
-- (b + B + W) seconds. Spend therefore counts for at least W and at most W + B seconds.
-- Buckets with start <= cutoff have left the window.
local cutoff = math.floor((now_ms - (W + B) * 1000) / 1000)

local KIND_FIELDS = {
  { used = 'used_tokens', reserved = 'reserved_tokens', suffix = ':tokens' },
  { used = 'used_usd', reserved = 'reserved_usd', suffix = ':usd' },
}

local function I(n)
  return string.format('%d', n)
end

local function num(value)
  if value == false or value == nil then
    return 0
  end
  return tonumber(value)
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

local function keys_of(i)
  local base = (i - 1) * KEYS_PER_SCOPE
  return {
    totals = KEYS[base + 1],
    buckets = KEYS[base + 2],
    starts = KEYS[base + 3],
    res = KEYS[base + 4],
    resexp = KEYS[base + 5],
  }
end

local scopes = {}
for i = 1, N do
  scopes[i] = keys_of(i)
end
local dirty = {}

local function parse_record(record)
  local tokens, usd = string.match(record, '^(%d+) (%d+)$')
  return tonumber(tokens), tonumber(usd)
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
      redis.call('HINCRBY', k.buckets, I(b) .. KIND_FIELDS[kind].suffix, I(amount))
      redis.call('HINCRBY', k.totals, KIND_FIELDS[kind].used, I(amount))
      charged = true
    end
  end
  if charged then
    redis.call('ZADD', k.starts, I(b), I(b))
    dirty[i] = true
  end
end

local function release(i, tokens, usd)
  local k = scopes[i]
  if tokens > 0 then
    redis.call('HINCRBY', k.totals, 'reserved_tokens', I(-tokens))
  end
  if usd > 0 then
    redis.call('HINCRBY', k.totals, 'reserved_usd', I(-usd))
  end
  dirty[i] = true
end

-- Remove the reservation `id` from scope i; returns its amounts, or nil when it is not there.
local function take_reservation(i, id)
  local k = scopes[i]
  local record = redis.call('HGET', k.res, id)
  if not record then
    return nil
  end
  local tokens, usd = parse_record(record)
  redis.call('HDEL', k.res, id)
  redis.call('ZREM', k.resexp, id)
  release(i, tokens, usd)
  return tokens, usd
end

-- Incremental expiry of scope i, run first by every operation:
-- 1. every reservation whose expiry is due becomes a charge of its full reserved amounts,
--    recorded in the bucket of its expiry time (so the result does not depend on which later
--    call happens to sweep it, and is the same in every scope of the reservation);
-- 2. every bucket that has left the window is subtracted from the running totals and deleted.
local function sweep(i)
  local k = scopes[i]
  local due = redis.call('ZRANGEBYSCORE', k.resexp, '-inf', I(now_ms), 'WITHSCORES')
  for j = 1, #due, 2 do
    local id = due[j]
    local expires_ms = tonumber(due[j + 1])
    local tokens, usd = take_reservation(i, id)
    if tokens then
      charge(i, bucket_of(expires_ms), tokens, usd)
    end
  end
  local old = redis.call('ZRANGEBYSCORE', k.starts, '-inf', I(cutoff))
  if #old > 0 then
    for _, b in ipairs(old) do
      for kind = 1, 2 do
        local field = b .. KIND_FIELDS[kind].suffix
        local amount = num(redis.call('HGET', k.buckets, field))
        if amount > 0 then
          redis.call('HINCRBY', k.totals, KIND_FIELDS[kind].used, I(-amount))
          redis.call('HDEL', k.buckets, field)
        end
      end
    end
    redis.call('ZREMRANGEBYSCORE', k.starts, '-inf', I(cutoff))
    dirty[i] = true
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
end

local function finish(reply)
  for i = 1, N do
    if dirty[i] then
      refresh_ttl(i)
    end
  end
  return reply
end

local function totals_of(i)
  local t = redis.call('HMGET', scopes[i].totals, 'used_tokens', 'used_usd', 'reserved_tokens',
    'reserved_usd')
  return { num(t[1]), num(t[2]) }, { num(t[3]), num(t[4]) }
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
      fields[j] = b .. KIND_FIELDS[kind].suffix
    end
    local amounts = redis.call('HMGET', k.buckets, unpack(fields))
    for j, b in ipairs(starts) do
      local result = visit(tonumber(b), num(amounts[j]))
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
    return tonumber(first[2])
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
  sweep(i)
end

if op == 'reserve' then
  -- ARGV[5] id, [6] tokens, [7] usd, [8] ttl ms, then per scope: token limit, usd limit
  -- ('' = unlimited).
  -- Reply: {1, expires_ms} or
  --        {0, scope index, kind (1 tokens, 2 usd), limit, used, reserved, requested,
  --         retry_after seconds (-1 = none), never_fits (0/1)}
  local id = ARGV[5]
  local requested = { tonumber(ARGV[6]), tonumber(ARGV[7]) }
  local ttl_ms = tonumber(ARGV[8])

  -- The client library retries a command whose reply was lost: the same id twice must not
  -- reserve twice.
  local existing = redis.call('ZSCORE', scopes[1].resexp, id)
  if existing then
    return finish({ 1, tonumber(existing) })
  end

  local worst = nil
  for i = 1, N do
    local used, reserved = totals_of(i)
    for kind = 1, 2 do
      local limit_arg = ARGV[8 + (i - 1) * 2 + kind]
      if limit_arg ~= '' then
        local limit = tonumber(limit_arg)
        if used[kind] + reserved[kind] + requested[kind] > limit then
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
  end
  if worst then
    return finish(worst.reply)
  end

  local expires_ms = now_ms + ttl_ms
  local record = I(requested[1]) .. ' ' .. I(requested[2])
  for i = 1, N do
    local k = scopes[i]
    if requested[1] > 0 then
      redis.call('HINCRBY', k.totals, 'reserved_tokens', I(requested[1]))
    end
    if requested[2] > 0 then
      redis.call('HINCRBY', k.totals, 'reserved_usd', I(requested[2]))
    end
    redis.call('HSET', k.res, id, record)
    redis.call('ZADD', k.resexp, I(expires_ms), id)
    dirty[i] = true
  end
  return finish({ 1, expires_ms })
elseif op == 'settle' then
  -- ARGV[5] id, [6] actual tokens, [7] actual usd. Reply: {1} settled, {0} not there (already
  -- settled, or expired and charged in full by the sweep above).
  local id = ARGV[5]
  local tokens = tonumber(ARGV[6])
  local usd = tonumber(ARGV[7])
  local found = 0
  local b = bucket_of(now_ms)
  for i = 1, N do
    if take_reservation(i, id) then
      charge(i, b, tokens, usd)
      found = 1
    end
  end
  return finish({ found })
elseif op == 'extend' then
  -- ARGV[5] id, [6] ttl ms. Reply: {1, expires_ms} or {0, 0} when the reservation is gone.
  local id = ARGV[5]
  local expires_ms = now_ms + tonumber(ARGV[6])
  local found = 0
  for i = 1, N do
    local k = scopes[i]
    local current = redis.call('ZSCORE', k.resexp, id)
    if current then
      if tonumber(current) > expires_ms then
        expires_ms = tonumber(current)
      end
      found = 1
    end
  end
  if found == 0 then
    return finish({ 0, 0 })
  end
  for i = 1, N do
    local k = scopes[i]
    if redis.call('ZSCORE', k.resexp, id) then
      redis.call('ZADD', k.resexp, I(expires_ms), id)
      dirty[i] = true
    end
  end
  return finish({ 1, expires_ms })
elseif op == 'snapshot' then
  -- Reply: per scope: used tokens, used usd, reserved tokens, reserved usd,
  -- seconds_until_free tokens, seconds_until_free usd (-1 = nothing used).
  local reply = {}
  for i = 1, N do
    local used, reserved = totals_of(i)
    for _, value in ipairs({ used[1], used[2], reserved[1], reserved[2] }) do
      reply[#reply + 1] = value
    end
    for kind = 1, 2 do
      if used[kind] > 0 then
        reply[#reply + 1] = seconds_until_free(i, kind)
      else
        reply[#reply + 1] = -1
      end
    end
  end
  return finish(reply)
end

return redis.error_reply('kubeagents ledger: unknown operation ' .. tostring(op))
