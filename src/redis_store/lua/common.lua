-- Shared helpers of the rate-limit scripts (prepended to each script).
-- Times are microseconds on the Redis server's clock (TIME, never taken
-- backwards: see now_of); every number stays below 2^53 so that Lua's
-- doubles hold it exactly.
--
-- Layout 2 of one limiter key (all under one hash tag {prefix:key}):
--   KEYS[1] = {prefix:key}:s2  hash: id (the next reservation id), tm (the
--     latest server time seen), gate, last (the FIFO tail), ex (until when
--     every key below lives at least), and per dimension tag:
--       sum:<tag>   the cost of its live entries (a running sum)
--       hd:<tag>    the oldest reservation id that may still have an entry
--       fc/fp/ft:<tag>  the "free" cursor: the entries with an id up to fc
--                   hold fp of cost, and each has at <= ft (so they no
--                   longer count from ft + window on)
--       uc/up/ut:<tag>  the "used" cursor: the same with at <= ut, ut being
--                   the latest `now` of a learn: up is the usage started
--       lim:<tag>, lu:<tag>  a learned limit and its expiry
--       xc:<tag>, xu:<tag>   usage we did not see, and until when it counts
--   KEYS[2] = {prefix:key}:q   sorted set: the reservations booked ahead of
--     their acquire's now (member id, score at), for the FIFO tail after a
--     cancel
--   KEYS[2+i] = {prefix:key}:e:<tag>  hash: reservation id -> "at,cost",
--     one field per reservation with a cost in the dimension
--   {prefix:key}:k:<token>  the reservation id an acquire made for its
--     caller's token (or 'c': cancelled), for a cancel whose caller never
--     got the answer
-- A dimension's tag is "<r|t|i|o>:<window in microseconds>".
--
-- No script reads a whole window: ids are consecutive per key and `at`
-- never decreases with the id, so each entry is read by id (HGET, O(1)),
-- pruning pops from the oldest id, and the two cursors only move forward
-- (except after a cancel of the FIFO tail, a few entries back): each entry
-- is visited a bounded number of times over its life, whatever the
-- window's traffic.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(x)
  if x then return tonumber(x) end
  return nil
end

local function int(x)
  return string.format('%.0f', x)
end

local function parse(e)
  local a, c = string.match(e, '^(%d+),(%d+)$')
  return tonumber(a), tonumber(c)
end

local function fmt(at, cost)
  return string.format('%.0f,%.0f', at, cost)
end

-- The key's clock: the server's, never before the latest time a script of
-- this key saw (a wall clock stepped back must not break the order of the
-- entries, which the cursors rely on).
local function now_of(tm)
  local T = now_us()
  if tm and tm > T then T = tm end
  return T
end

-- Counts an entries hash from scratch: only when the state hash was lost
-- (eviction) while the entries survived. Returns sum, oldest, newest id.
local function recount(e)
  local sum, lo, hi = 0, nil, nil
  local all = redis.call('HGETALL', e)
  for i = 1, #all, 2 do
    local id = tonumber(all[i])
    local _, c = parse(all[i + 1])
    sum = sum + c
    if not lo or id < lo then lo = id end
    if not hi or id > hi then hi = id end
  end
  return sum, lo, hi
end

local function set_cursors(d)
  d.fc, d.fp, d.ft = d.hd - 1, 0, 0
  d.uc, d.up, d.ut = d.hd - 1, 0, 0
end

-- Reads a dimension's state (one HMGET). A learned limit counts only with
-- its expiry (lu:<tag>) still ahead. Returns the newest id the entries
-- hold when they had to be recounted (nil otherwise); d.hd is then nil
-- when there were none, for load_dims to set.
local function load_dim(h, d, T)
  local tg = d.tag
  local v = redis.call('HMGET', h, 'sum:' .. tg, 'hd:' .. tg, 'fc:' .. tg,
    'fp:' .. tg, 'ft:' .. tg, 'uc:' .. tg, 'up:' .. tg, 'ut:' .. tg,
    'lim:' .. tg, 'lu:' .. tg, 'xc:' .. tg, 'xu:' .. tg)
  local hi = nil
  d.sum = num(v[1])
  d.hd = num(v[2])
  if d.sum and d.hd then
    d.fc, d.fp, d.ft = num(v[3]) or d.hd - 1, num(v[4]) or 0, num(v[5]) or 0
    d.uc, d.up, d.ut = num(v[6]) or d.hd - 1, num(v[7]) or 0, num(v[8]) or 0
  else
    -- A new dimension, a fresh key, or a lost state hash.
    local lo
    d.sum, lo, hi = recount(d.e)
    d.hd = lo
    if lo then set_cursors(d) end
  end
  d.lim = d.configured
  d.lu = nil
  local lim, lu = num(v[9]), num(v[10])
  d.had_lim = (v[9] or v[10]) and true or false
  if lim and lu and lu > T then
    d.lim = lim
    d.lu = lu
  end
  d.xc, d.xu = num(v[11]), num(v[12])
  d.had_x = (v[11] or v[12]) and true or false
  if not (d.xc and d.xu) then
    d.xc = nil
    d.xu = nil
  end
  return hi
end

-- Loads every dimension and settles the next id: the stored one, or, when
-- the state hash was lost but entries survived, the one after the newest
-- entry (the incarnation goes on: its ids must not jump, or pruning would
-- walk the gap), or else T (a new incarnation: a late cancel of an
-- expired one cannot hit a new reservation). Returns the next id.
local function load_dims(h, dims, T, nextid)
  local hi = nil
  for _, d in ipairs(dims) do
    local x = load_dim(h, d, T)
    if x and (not hi or x > hi) then hi = x end
  end
  if not nextid then
    nextid = T
    if hi then nextid = hi + 1 end
  elseif hi and hi >= nextid then
    nextid = hi + 1
  end
  for _, d in ipairs(dims) do
    if not d.hd then
      d.hd = nextid
      set_cursors(d)
    end
  end
  return nextid
end

-- Drops the entries that no longer count at T, oldest first (each entry
-- once in its life: amortised O(1)).
local function prune_dim(d, T, nextid)
  while d.hd < nextid do
    local v = redis.call('HGET', d.e, int(d.hd))
    if v then
      local at, c = parse(v)
      if at + d.window > T then break end
      redis.call('HDEL', d.e, int(d.hd))
      d.sum = d.sum - c
      if d.hd <= d.fc then d.fp = d.fp - c end
      if d.hd <= d.uc then d.up = d.up - c end
    end
    d.hd = d.hd + 1
  end
  if d.fc < d.hd - 1 then d.fc, d.fp = d.hd - 1, 0 end
  if d.uc < d.hd - 1 then d.uc, d.up = d.hd - 1, 0 end
  if d.xu and d.xu <= T then
    d.xc = nil
    d.xu = nil
  end
end

-- Moves a cursor (ids up to c hold p of cost, each with at <= t0) to
-- theta: forward over the entries with at <= theta (it stops at the first
-- later one: exact, the entries being in order), or, when theta went
-- back, backward over the entries past it. Returns c, p.
local function advance(d, c, p, t0, theta, nextid)
  if c < d.hd - 1 then c, p = d.hd - 1, 0 end
  if theta >= t0 then
    while c + 1 < nextid do
      local v = redis.call('HGET', d.e, int(c + 1))
      if v then
        local at, cost = parse(v)
        if at > theta then break end
        p = p + cost
      end
      c = c + 1
    end
  else
    while c >= d.hd do
      local v = redis.call('HGET', d.e, int(c))
      if v then
        local at, cost = parse(v)
        if at <= theta then break end
        p = p - cost
      end
      c = c - 1
    end
  end
  return c, p
end

-- The free cursor at base: every entry it covers no longer counts at base.
local function free_at(d, base, nextid)
  local theta = base - d.window
  d.fc, d.fp = advance(d, d.fc, d.fp, d.ft, theta, nextid)
  d.ft = theta
end

-- The earliest t >= base at which the entries leave room for cost within
-- budget (nil when cost > budget), base being at or after the free
-- cursor's base. O(1) when it fits by the running sum; else it reads the
-- entries past the cursor, oldest first, only until enough of them have
-- stopped counting.
local function earliest_with(d, base, cost, budget, nextid)
  if cost > budget then return nil end
  local allowed = budget - cost
  local rest = d.sum - d.fp
  local t = base
  local j = d.fc
  while rest > allowed and j + 1 < nextid do
    j = j + 1
    local v = redis.call('HGET', d.e, int(j))
    if v then
      local at, c = parse(v)
      rest = rest - c
      local free = at + d.window
      if free > t then t = free end
    end
  end
  return t
end

-- The earliest t >= base that fits cost under limit lim, with the
-- external usage counted until it expires.
local function earliest_under(d, base, cost, lim, nextid)
  local plain = earliest_with(d, base, cost, lim, nextid)
  if not plain then return nil end
  if d.xu and plain < d.xu then
    local b = lim - d.xc
    if b < 0 then b = 0 end
    local t = earliest_with(d, base, cost, b, nextid)
    if t and t < d.xu then return t end
    return d.xu
  end
  return plain
end

-- The earliest t >= base that fits cost; nil only when cost exceeds the
-- configured limit (a learned limit expires, so it never makes a request
-- "never fit"). The learned limit holds before its expiry d.lu, the
-- configured one from then on.
local function earliest_dim(d, base, cost, nextid)
  if cost > d.configured then return nil end
  if not d.lu then return earliest_under(d, base, cost, d.lim, nextid) end
  local t = earliest_under(d, base, cost, d.lim, nextid)
  if t and t < d.lu then return t end
  local b = base
  if d.lu > b then b = d.lu end
  return earliest_under(d, b, cost, d.configured, nextid)
end

-- Sets a key's expiry to at least ttl milliseconds (never shortens it:
-- another process may have configured a longer window).
local function extend(k, ttl)
  local cur = redis.call('PTTL', k)
  if cur == -2 then return end
  if cur < ttl then redis.call('PEXPIRE', k, ttl) end
end

-- Appends a dimension's fields to an HSET argument list, and the ones to
-- delete to an HDEL list.
local function dim_fields(d, set, del)
  local tg = d.tag
  local function put(f, v)
    set[#set + 1] = f .. tg
    set[#set + 1] = int(v)
  end
  put('sum:', d.sum)
  put('hd:', d.hd)
  put('fc:', d.fc)
  put('fp:', d.fp)
  put('ft:', d.ft)
  put('uc:', d.uc)
  put('up:', d.up)
  put('ut:', d.ut)
  if d.lu and d.lim ~= d.configured then
    put('lim:', d.lim)
    put('lu:', d.lu)
  elseif d.had_lim then
    del[#del + 1] = 'lim:' .. tg
    del[#del + 1] = 'lu:' .. tg
  end
  if d.xu then
    put('xc:', d.xc)
    put('xu:', d.xu)
  elseif d.had_x then
    del[#del + 1] = 'xc:' .. tg
    del[#del + 1] = 'xu:' .. tg
  end
end

-- Writes the state back (one HSET, at most one HDEL) and keeps every key
-- alive as long as something in it still counts, plus one second. The
-- expiry is pushed in steps (ex: the time every key lives at least until,
-- slack: how far beyond the need each step reaches), so that most calls
-- touch no expiry at all. `extra` holds key-wide fields to set, `fresh`
-- the keys this call may have created (their expiry is set at once).
local function save(h, q, dims, T, horizon, extra, fresh)
  local set, del = {}, {}
  for i = 1, #extra do set[#set + 1] = extra[i] end
  local maxw = 0
  for _, d in ipairs(dims) do
    dim_fields(d, set, del)
    if d.lu and d.lim ~= d.configured and d.lu > horizon then horizon = d.lu end
    if d.xu and d.xu > horizon then horizon = d.xu end
    if d.window > maxw then maxw = d.window end
  end
  local need = horizon + maxw + 1000000
  local ex = num(redis.call('HGET', h, 'ex'))
  if not ex or need > ex then
    local slack = maxw / 2
    if slack > 250000 then slack = 250000 end
    ex = need + slack
    set[#set + 1] = 'ex'
    set[#set + 1] = int(ex)
    redis.call('HSET', h, unpack(set))
    if #del > 0 then redis.call('HDEL', h, unpack(del)) end
    local ttl = math.ceil((ex - T) / 1000)
    extend(h, ttl)
    extend(q, ttl)
    for _, d in ipairs(dims) do extend(d.e, ttl) end
  else
    redis.call('HSET', h, unpack(set))
    if #del > 0 then redis.call('HDEL', h, unpack(del)) end
    local ttl = math.ceil((ex - T) / 1000)
    for _, k in ipairs(fresh) do extend(k, ttl) end
  end
end

-- The dimensions named by ARGV[tags .. tags + n - 1] (tag, window us),
-- their entries in KEYS[3 .. n + 2].
local function dims_of(n, tags)
  local dims = {}
  for i = 1, n do
    local o = tags + (i - 1) * 2
    dims[i] = { tag = ARGV[o], window = tonumber(ARGV[o + 1]), e = KEYS[2 + i] }
  end
  return dims
end

-- Takes reservation id out of the dimensions (its cost out of the running
-- sums and the cursors that cover it) and, when it was booked ahead, out
-- of the FIFO queue, moving the tail back to the newest reservation left
-- ahead of now. Returns 1 when the reservation was found.
local function cancel_id(h, q, id, dims)
  local found = 0
  local T = now_of(num(redis.call('HGET', h, 'tm')))
  for _, d in ipairs(dims) do
    local f = int(id)
    local v = redis.call('HGET', d.e, f)
    if v then
      local _, c = parse(v)
      redis.call('HDEL', d.e, f)
      local tg = d.tag
      local s = redis.call('HMGET', h, 'sum:' .. tg, 'fc:' .. tg, 'fp:' .. tg,
        'uc:' .. tg, 'up:' .. tg)
      if s[1] then
        local upd = { 'sum:' .. tg, int(tonumber(s[1]) - c) }
        if s[2] and s[3] and id <= tonumber(s[2]) then
          upd[#upd + 1] = 'fp:' .. tg
          upd[#upd + 1] = int(tonumber(s[3]) - c)
        end
        if s[4] and s[5] and id <= tonumber(s[4]) then
          upd[#upd + 1] = 'up:' .. tg
          upd[#upd + 1] = int(tonumber(s[5]) - c)
        end
        redis.call('HSET', h, unpack(upd))
      end
      found = 1
    end
  end
  if redis.call('ZREM', q, int(id)) == 1 then
    -- Booked ahead: the tail is the newest reservation left ahead of now.
    redis.call('ZREMRANGEBYSCORE', q, '-inf', int(T))
    local top = redis.call('ZREVRANGE', q, 0, 0, 'WITHSCORES')
    if top[2] then
      redis.call('HSET', h, 'last', int(tonumber(top[2])))
    else
      redis.call('HDEL', h, 'last')
    end
  end
  return found
end
