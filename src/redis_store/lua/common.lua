-- Shared helpers of the rate-limit scripts (prepended to each script).
-- Times are microseconds on the Redis server's clock (TIME); every number
-- stays below 2^53 so that Lua's doubles hold it exactly.
-- Layout of one limiter key (all under one hash tag {prefix:key}):
--   KEYS[1] = {prefix:key}:s   hash: gate, last, id, and per dimension tag
--                              sum:<tag>, lim:<tag> and lu:<tag> (a learned
--                              limit and its expiry), xc:<tag>, xu:<tag>
--   KEYS[1+i] = {prefix:key}:l:<tag>  list of "at,id,cost", oldest first
--   {prefix:key}:k:<token>  the reservation id an acquire made for its
--                           caller's token (or 'c': cancelled), for a
--                           cancel whose caller never got the answer
-- A dimension's tag is "<r|t|i|o>:<window in microseconds>".
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(x)
  if x then return tonumber(x) end
  return nil
end

local function parse(e)
  local a, i, c = string.match(e, '^(%d+),(%d+),(%d+)$')
  return tonumber(a), tonumber(i), tonumber(c)
end

local function fmt(at, id, cost)
  return string.format('%.0f,%.0f,%.0f', at, id, cost)
end

local function int(x)
  return string.format('%.0f', x)
end

-- Reads a dimension's state. A learned limit counts only with its expiry
-- (lu:<tag>) still ahead: an expired one, or one stored without an expiry
-- (by an older version), leaves the configured limit in force.
local function load_dim(h, d, T)
  d.lim = d.configured
  d.lu = nil
  local lim = num(redis.call('HGET', h, 'lim:' .. d.tag))
  local lu = num(redis.call('HGET', h, 'lu:' .. d.tag))
  if lim and lu and lu > T then
    d.lim = lim
    d.lu = lu
  end
  local s = redis.call('HGET', h, 'sum:' .. d.tag)
  if s then
    d.sum = tonumber(s)
  else
    -- No sum (fresh key, or the hash was lost): recount the log.
    d.sum = 0
    for _, e in ipairs(redis.call('LRANGE', d.log, 0, -1)) do
      local _, _, c = parse(e)
      d.sum = d.sum + c
    end
  end
  d.xc = num(redis.call('HGET', h, 'xc:' .. d.tag))
  d.xu = num(redis.call('HGET', h, 'xu:' .. d.tag))
  if not (d.xc and d.xu) then
    d.xc = nil
    d.xu = nil
  end
end

local function prune_dim(d, T)
  while true do
    local e = redis.call('LINDEX', d.log, 0)
    if not e then break end
    local at, _, c = parse(e)
    if at + d.window <= T then
      redis.call('LPOP', d.log)
      d.sum = d.sum - c
    else
      break
    end
  end
  if d.xu and d.xu <= T then
    d.xc = nil
    d.xu = nil
  end
end

-- The earliest t >= base at which the log leaves room for cost within
-- budget (nil when cost > budget).
local function earliest_with(d, base, cost, budget)
  if cost > budget then return nil end
  local allowed = budget - cost
  local sum = d.sum
  local t = base
  local start = 0
  while sum > allowed do
    local chunk = redis.call('LRANGE', d.log, start, start + 127)
    if #chunk == 0 then break end
    for _, e in ipairs(chunk) do
      if sum <= allowed then break end
      local at, _, c = parse(e)
      sum = sum - c
      local free = at + d.window
      if free > t then t = free end
    end
    start = start + 128
  end
  return t
end

-- The earliest t >= base that fits cost under limit lim, with the
-- external usage counted until it expires.
local function earliest_under(d, base, cost, lim)
  local plain = earliest_with(d, base, cost, lim)
  if not plain then return nil end
  if d.xu and plain < d.xu then
    local b = lim - d.xc
    if b < 0 then b = 0 end
    local t = earliest_with(d, base, cost, b)
    if t and t < d.xu then return t end
    return d.xu
  end
  return plain
end

-- The earliest t >= base that fits cost; nil only when cost exceeds the
-- configured limit (a learned limit expires, so it never makes a request
-- "never fit"). The learned limit holds before its expiry d.lu, the
-- configured one from then on.
local function earliest_dim(d, base, cost)
  if cost > d.configured then return nil end
  if not d.lu then return earliest_under(d, base, cost, d.lim) end
  local t = earliest_under(d, base, cost, d.lim)
  if t and t < d.lu then return t end
  local b = base
  if d.lu > b then b = d.lu end
  return earliest_under(d, b, cost, d.configured)
end

-- Finds reservation id in a log, scanning from the newest entry (a
-- cancelled or corrected reservation is recent: this touches a few
-- entries, not the whole window) and stopping at the first older id.
-- Returns its 0-based index, the entry, its time and cost.
local function find(log, id)
  local hi = redis.call('LLEN', log) - 1
  while hi >= 0 do
    local lo = hi - 63
    if lo < 0 then lo = 0 end
    local chunk = redis.call('LRANGE', log, lo, hi)
    for j = #chunk, 1, -1 do
      local at, eid, c = parse(chunk[j])
      if eid == id then return lo + j - 1, chunk[j], at, c end
      if eid < id then return nil end
    end
    hi = lo - 1
  end
  return nil
end

-- Takes reservation id out of the n logs KEYS[2 .. n + 1], whose tags are
-- ARGV[tags .. tags + n - 1], and moves the FIFO tail back to the newest
-- reservation left. Returns 1 when the reservation was found.
local function cancel_id(h, id, n, tags)
  local last = nil
  local found = 0
  for i = 1, n do
    local log = KEYS[1 + i]
    local tag = ARGV[tags + i - 1]
    local idx, e, _, c = find(log, id)
    if idx then
      redis.call('LREM', log, -1, e)
      if redis.call('HEXISTS', h, 'sum:' .. tag) == 1 then
        redis.call('HINCRBY', h, 'sum:' .. tag, int(-c))
      end
      found = 1
    end
    local b = redis.call('LINDEX', log, -1)
    if b then
      local at = parse(b)
      if not last or at > last then last = at end
    end
  end
  if last then
    redis.call('HSET', h, 'last', int(last))
  else
    redis.call('HDEL', h, 'last')
  end
  return found
end

-- Sets a key's expiry to at least ttl milliseconds (never shortens it:
-- another process may have configured a longer window).
local function extend(k, ttl)
  local cur = redis.call('PTTL', k)
  if cur == -2 then return end
  if cur < ttl then redis.call('PEXPIRE', k, ttl) end
end

-- Writes the dimensions back and keeps every key alive exactly as long
-- as something in it still counts (plus one second).
local function save(h, dims, T, horizon)
  local maxw = 0
  for _, d in ipairs(dims) do
    redis.call('HSET', h, 'sum:' .. d.tag, int(d.sum))
    if d.lu and d.lim ~= d.configured then
      redis.call('HSET', h, 'lim:' .. d.tag, int(d.lim), 'lu:' .. d.tag, int(d.lu))
      if d.lu > horizon then horizon = d.lu end
    else
      redis.call('HDEL', h, 'lim:' .. d.tag, 'lu:' .. d.tag)
    end
    if d.xu then
      redis.call('HSET', h, 'xc:' .. d.tag, int(d.xc), 'xu:' .. d.tag, int(d.xu))
      if d.xu > horizon then horizon = d.xu end
    else
      redis.call('HDEL', h, 'xc:' .. d.tag, 'xu:' .. d.tag)
    end
    if d.window > maxw then maxw = d.window end
  end
  local ttl = math.ceil((horizon - T + maxw) / 1000) + 1000
  extend(h, ttl)
  for _, d in ipairs(dims) do extend(d.log, ttl) end
end

