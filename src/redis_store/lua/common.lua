-- Shared helpers of the rate-limit scripts (prepended to each script).
-- Times are microseconds on the Redis server's clock (TIME, never taken
-- backwards: see now_of); every number stays below 2^53 so that Lua's
-- doubles hold it exactly.
--
-- Layout 2 of one limiter key (all under one hash tag {prefix:key}).
-- Numbers are stored as little-endian doubles (struct.pack: exact below
-- 2^53), which Lua reads and writes far faster than decimal text.
--   KEYS[1] = {prefix:key}:s2  hash:
--     k = id (the next reservation id), tm (the latest server time seen),
--         gate, last (the FIFO tail), ex (until when every key below lives
--         at least); -1: none
--     c:<tag> = per dimension: sum (the cost of its live entries: a
--         running sum), hd (the oldest reservation id that may still have
--         an entry), fc fp ft (the "free" cursor: the entries with an id
--         up to fc hold fp of cost, and each has at <= ft, so they no
--         longer count from ft + window on), uc up ut (the "used" cursor:
--         the same with at <= ut, the latest `now` of a call: up is the
--         usage started), hl, hx (1: the fields below may exist)
--     lim:<tag>, lu:<tag>  a learned limit and its expiry (decimal)
--     xc:<tag>, xu:<tag>   usage we did not see, and until when it counts
--   KEYS[2] = {prefix:key}:q   sorted set: the reservations booked ahead of
--     their acquire's now (member id, score at), for the FIFO tail after a
--     cancel
--   KEYS[2+i] = {prefix:key}:e:<tag>  hash: reservation id (decimal) ->
--     (at, cost), one field per reservation with a cost in the dimension
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

-- Integers below 2^53 print exactly with %d (a C long on 64 bits), and
-- far cheaper than with %.0f.
local function int(x)
  return string.format('%d', x)
end

-- An entry: (at, cost).
local function parse(e)
  local at, c = struct.unpack('<dd', e)
  return at, c
end

local function fmt(at, cost)
  return struct.pack('<dd', at, cost)
end

local function opt(x)
  if x < 0 then return nil end
  return x
end

-- The key-wide fields (k): id, tm, gate, last, ex, each nil when absent.
local function unpack_k(v)
  if not v then return nil, nil, nil, nil, nil end
  local id, tm, gate, last, ex = struct.unpack('<ddddd', v)
  return opt(id), opt(tm), opt(gate), opt(last), opt(ex)
end

local function pack_k(id, tm, gate, last, ex)
  return struct.pack('<ddddd', id or -1, tm or -1, gate or -1, last or -1, ex or -1)
end

-- A dimension's counters (c:<tag>); false when there are none.
local C = '<ddddddddddddd'

local function unpack_c(d, v)
  if not v then return false end
  d.sum, d.hd, d.ha, d.fc, d.fp, d.ft, d.fa, d.uc, d.up, d.ut, d.ua, d.hl, d.hx =
    struct.unpack(C, v)
  return true
end

local function pack_c(d)
  return struct.pack(C, d.sum, d.hd, d.ha, d.fc, d.fp, d.ft, d.fa, d.uc, d.up,
    d.ut, d.ua, d.hl or 0, d.hx or 0)
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
  d.ha = -1
  d.fc, d.fp, d.ft, d.fa = d.hd - 1, 0, 0, -1
  d.uc, d.up, d.ut, d.ua = d.hd - 1, 0, 0, -1
end

-- Reads a dimension's state from its c:<tag> value v (and, only when it
-- says there may be one, its learned limit or external usage: one more
-- HMGET). A learned limit counts only with its expiry (lu:<tag>) still
-- ahead. Returns the newest id the entries hold when they had to be
-- recounted (nil otherwise); d.hd is then nil when there were none, for
-- load_dims to set.
local function load_dim(h, d, T, v)
  local hi = nil
  if not unpack_c(d, v) then
    -- A new dimension, a fresh key, or a lost state hash.
    local lo
    d.sum, lo, hi = recount(d.e)
    d.hd = lo
    d.hl, d.hx = 1, 1
    if lo then set_cursors(d) end
  end
  d.lim = d.configured
  d.lu = nil
  d.had_lim, d.had_x = d.hl == 1, d.hx == 1
  d.xc, d.xu = nil, nil
  if d.had_lim or d.had_x then
    local tg = d.tag
    local x = redis.call('HMGET', h, 'lim:' .. tg, 'lu:' .. tg, 'xc:' .. tg, 'xu:' .. tg)
    local lim, lu = num(x[1]), num(x[2])
    if lim and lu and lu > T then
      d.lim = lim
      d.lu = lu
    end
    d.xc, d.xu = num(x[3]), num(x[4])
    if not (d.xc and d.xu) then
      d.xc = nil
      d.xu = nil
    end
  end
  return hi
end

-- Loads every dimension (their c:<tag> values at v[o + 1 ..], in dims
-- order) and settles the next id: the stored one, or, when
-- the state hash was lost but entries survived, the one after the newest
-- entry (the incarnation goes on: its ids must not jump, or pruning would
-- walk the gap), or else T (a new incarnation: a late cancel of an
-- expired one cannot hit a new reservation). Returns the next id.
local function load_dims(h, dims, T, nextid, v, o)
  local hi = nil
  for i, d in ipairs(dims) do
    local x = load_dim(h, d, T, v[o + i])
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
-- once in its life: amortised O(1)). ha, the instant of the oldest entry
-- (-1: unknown), spares the read while that entry still counts (a
-- cancelled oldest entry leaves ha a lower bound of the next one's).
local function prune_dim(d, T, nextid)
  if not (d.ha >= 0 and d.ha + d.window > T) then
    d.ha = -1
    while d.hd < nextid do
      local v = redis.call('HGET', d.e, int(d.hd))
      if v then
        local at, c = parse(v)
        if at + d.window > T then
          d.ha = at
          break
        end
        redis.call('HDEL', d.e, int(d.hd))
        d.sum = d.sum - c
        if d.hd <= d.fc then d.fp = d.fp - c end
        if d.hd <= d.uc then d.up = d.up - c end
      end
      d.hd = d.hd + 1
    end
  end
  if d.fc < d.hd - 1 then d.fc, d.fp, d.fa = d.hd - 1, 0, -1 end
  if d.uc < d.hd - 1 then d.uc, d.up, d.ua = d.hd - 1, 0, -1 end
  if d.xu and d.xu <= T then
    d.xc = nil
    d.xu = nil
  end
end

-- Moves a cursor (ids up to c hold p of cost, each with at <= t0; a: the
-- instant of the first entry past it, -1: unknown) to theta: forward
-- over the entries with at <= theta (it stops at the first later one:
-- exact, the entries being in order; a known later a spares the read),
-- or, when theta went back, backward over the entries past it. Returns
-- c, p, a.
local function advance(d, c, p, t0, a, theta, nextid)
  if c < d.hd - 1 then c, p, a = d.hd - 1, 0, -1 end
  if theta >= t0 then
    if a >= 0 and a > theta then return c, p, a end
    a = -1
    while c + 1 < nextid do
      local v = redis.call('HGET', d.e, int(c + 1))
      if v then
        local at, cost = parse(v)
        if at > theta then
          a = at
          break
        end
        p = p + cost
      end
      c = c + 1
    end
  else
    a = -1
    while c >= d.hd do
      local v = redis.call('HGET', d.e, int(c))
      if v then
        local at, cost = parse(v)
        if at <= theta then break end
        p = p - cost
        a = at
      end
      c = c - 1
    end
  end
  return c, p, a
end

-- The free cursor at base: every entry it covers no longer counts at base.
local function free_at(d, base, nextid)
  local theta = base - d.window
  d.fc, d.fp, d.fa = advance(d, d.fc, d.fp, d.ft, d.fa, theta, nextid)
  d.ft = theta
end

-- The used cursor at T.
local function used_at(d, T, nextid)
  d.uc, d.up, d.ua = advance(d, d.uc, d.up, d.ut, d.ua, T, nextid)
  d.ut = T
end

-- A new entry (id, at t, cost) joins the dimension: the running sum, and
-- the caches of the oldest entry and of the cursors that end just before
-- it (the used cursor takes it in at once when it has started by T).
local function add_entry(d, id, t, T)
  d.sum = d.sum + d.cost
  if d.hd == id and d.ha < 0 then d.ha = t end
  if d.fc == id - 1 and d.fa < 0 then d.fa = t end
  if d.uc == id - 1 then
    if t <= d.ut then
      d.uc = id
      d.up = d.up + d.cost
    elseif d.ua < 0 then
      d.ua = t
    end
  end
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
  d.hl = (d.lu and d.lim ~= d.configured) and 1 or 0
  d.hx = d.xu and 1 or 0
  set[#set + 1] = 'c:' .. tg
  set[#set + 1] = pack_c(d)
  if d.lu and d.lim ~= d.configured then
    set[#set + 1] = 'lim:' .. tg
    set[#set + 1] = int(d.lim)
    set[#set + 1] = 'lu:' .. tg
    set[#set + 1] = int(d.lu)
  elseif d.had_lim then
    del[#del + 1] = 'lim:' .. tg
    del[#del + 1] = 'lu:' .. tg
  end
  if d.xu then
    set[#set + 1] = 'xc:' .. tg
    set[#set + 1] = int(d.xc)
    set[#set + 1] = 'xu:' .. tg
    set[#set + 1] = int(d.xu)
  elseif d.had_x then
    del[#del + 1] = 'xc:' .. tg
    del[#del + 1] = 'xu:' .. tg
  end
end

-- Writes the state back (one HSET, at most one HDEL) and keeps every key
-- alive as long as something in it still counts, plus one second. The
-- expiry is pushed in steps (kw.ex: the time every key lives at least
-- until; each step reaches up to 250 ms beyond the need), so that most
-- calls touch no expiry at all. kw holds the key-wide fields (id, tm,
-- gate, last, ex), fresh the keys this call may have created (their
-- expiry is set at once), del fields to delete.
local function save(h, q, dims, T, horizon, kw, fresh, del)
  local set = {}
  local maxw = 0
  for _, d in ipairs(dims) do
    dim_fields(d, set, del)
    if d.lu and d.lim ~= d.configured and d.lu > horizon then horizon = d.lu end
    if d.xu and d.xu > horizon then horizon = d.xu end
    if d.window > maxw then maxw = d.window end
  end
  if kw.gate and kw.gate > horizon then horizon = kw.gate end
  if kw.last and kw.last > horizon then horizon = kw.last end
  local need = horizon + maxw + 1000000
  local stepped = not kw.ex or need > kw.ex
  if stepped then
    local slack = math.floor(maxw / 2)
    if slack > 250000 then slack = 250000 end
    kw.ex = need + slack
  end
  set[#set + 1] = 'k'
  set[#set + 1] = pack_k(kw.id, kw.tm, kw.gate, kw.last, kw.ex)
  redis.call('HSET', h, unpack(set))
  if #del > 0 then redis.call('HDEL', h, unpack(del)) end
  local ttl = math.ceil((kw.ex - T) / 1000)
  if stepped then
    extend(h, ttl)
    extend(q, ttl)
    for _, d in ipairs(dims) do extend(d.e, ttl) end
  else
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
  local names = {'k'}
  for _, d in ipairs(dims) do names[#names + 1] = 'c:' .. d.tag end
  local v = redis.call('HMGET', h, unpack(names))
  local kid, tm, gate, last, ex = unpack_k(v[1])
  local T = now_of(tm)
  local upd = {}
  local f = int(id)
  for i, d in ipairs(dims) do
    local e = redis.call('HGET', d.e, f)
    if e then
      local _, c = parse(e)
      redis.call('HDEL', d.e, f)
      if unpack_c(d, v[1 + i]) then
        d.sum = d.sum - c
        if id <= d.fc then d.fp = d.fp - c end
        if id <= d.uc then d.up = d.up - c end
        upd[#upd + 1] = 'c:' .. d.tag
        upd[#upd + 1] = pack_c(d)
      end
      found = 1
    end
  end
  if v[1] and redis.call('ZREM', q, int(id)) == 1 then
    -- Booked ahead: the tail is the newest reservation left ahead of now.
    redis.call('ZREMRANGEBYSCORE', q, '-inf', int(T))
    local top = redis.call('ZREVRANGE', q, 0, 0, 'WITHSCORES')
    last = nil
    if top[2] then last = tonumber(top[2]) end
    upd[#upd + 1] = 'k'
    upd[#upd + 1] = pack_k(kid, tm, gate, last, ex)
  end
  if #upd > 0 then redis.call('HSET', h, unpack(upd)) end
  return found
end
