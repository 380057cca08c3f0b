-- Shared helpers of the rate-limit scripts. Each script is a function of
-- (KEYS, ARGV): loaded once as a Redis function library (FCALL), or, on a
-- server without functions, sent as a script (EVALSHA) with these helpers
-- before it (see scripts.rs).
-- Times are microseconds on the Redis server's clock (TIME, never taken
-- backwards: see now_of); every number stays below 2^53 so that Lua's
-- doubles hold it exactly.
--
-- Layout 3 of one limiter key (all under one hash tag {prefix:key}).
-- The limits of a key are grouped by window: one group holds every limit
-- with that window (requests and tokens per minute are one group), and
-- shares one entry per reservation, one set of cursors and one field of
-- state. Numbers are stored as little-endian doubles (struct.pack: exact
-- below 2^53), ids too (as hash fields), which Lua reads and writes far
-- faster than decimal text.
--   KEYS[1] = {prefix:key}:s3  hash:
--     k = id (the next reservation id), tm (the latest server time seen),
--         gate, last (the FIFO tail), ex (until when every key below lives
--         at least), tb (until when a tombstone may exist), tg, tp (the
--         start and parity of the current token generation); -1: none
--     g:<group> = per group: hd (the oldest reservation id that may still
--         have an entry), ha (the instant of entry hd, or a lower bound;
--         -1: unknown), fc ft fa (the "free" cursor: the entries with an
--         id up to fc each have at <= ft, so they no longer count from
--         ft + window on; fa: the instant of the entry after fc, or a
--         lower bound, -1: unknown), uc ut ua (the "used" cursor: the same
--         with at <= ut, the latest `now` of a call), then per limit of
--         the group sum (the cost of its live entries: a running sum), fp
--         and up (the cost the two cursors cover), fl (1: lim:/lu: fields
--         may exist, 2: xc:/xu: fields may exist, 3: both)
--     lim:<tag>, lu:<tag>  a learned limit and its expiry (decimal)
--     xc:<tag>, xu:<tag>   usage we did not see, and until when it counts
--   KEYS[2] = {prefix:key}:q   sorted set: the reservations booked ahead of
--     their acquire's now (member id, score at), for the FIFO tail after a
--     cancel
--   {prefix:key}:e:<group>  hash: reservation id (packed) -> (at, the
--     cost in each limit of the group), one field per reservation with a
--     cost in the group
--   {prefix:key}:t0, :t1  hashes, two generations of acquire tokens:
--     token -> reservation id (packed), or 'c' once cancelled by token
--   {prefix:key}:k:<token>  'c': a tombstone, left by a cancel by token
--     that arrived before its acquire (the acquire then reserves nothing)
-- A group's name is "<codes>:<window in microseconds>" (codes in the
-- order r t i o), a limit's tag "<code>:<window in microseconds>".
--
-- No script reads a whole window: ids are consecutive per key and `at`
-- never decreases with the id, so each entry is read by id (HGET, O(1)),
-- pruning pops from the oldest id, and the two cursors only move forward
-- (except after a cancel of the FIFO tail, a few entries back): each entry
-- is visited a bounded number of times over its life, whatever the
-- window's traffic.
--
-- Written for Redis's one thread: every redis.call, table and number to
-- text conversion costs a microsecond or so, so the scripts make as few
-- as they can (tables built whole by their constructors, ids packed).

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(x)
  if x then return tonumber(x) end
  return nil
end

-- Integers below 2^53 print exactly with %d (a C long on 64 bits).
local function int(x)
  return string.format('%d', x)
end

-- A reservation id as a hash field.
local function idf(id)
  return struct.pack('<d', id)
end

local function opt(x)
  if x < 0 then return nil end
  return x
end

-- The key-wide fields (k), each nil when absent.
local function unpack_k(v)
  if not v then
    return {id = nil, tm = nil, gate = nil, last = nil, ex = nil, tb = nil, tg = nil, tp = 0}
  end
  local id, tm, gate, last, ex, tb, tg, tp = struct.unpack('<dddddddd', v)
  return {id = opt(id), tm = opt(tm), gate = opt(gate), last = opt(last), ex = opt(ex),
    tb = opt(tb), tg = opt(tg), tp = tp}
end

local function pack_k(kw)
  return struct.pack('<dddddddd', kw.id or -1, kw.tm or -1, kw.gate or -1, kw.last or -1,
    kw.ex or -1, kw.tb or -1, kw.tg or -1, kw.tp or 0)
end

-- The state of a group: 8 cursor fields, then 4 per limit.
local GF = {'<dddddddddddd', '<dddddddddddddddd', '<dddddddddddddddddddd',
  '<dddddddddddddddddddddddd'}
-- An entry: at, then the cost per limit.
local EF = {'<dd', '<ddd', '<dddd', '<ddddd'}

-- Reads an entry: returns its at, and leaves its costs in g.c.
local function read_entry(g, v)
  local c = g.c
  if g.k == 1 then
    local at, a = struct.unpack('<dd', v)
    c[1] = a
    return at
  elseif g.k == 2 then
    local at, a, b = struct.unpack('<ddd', v)
    c[1], c[2] = a, b
    return at
  end
  local x = {struct.unpack(EF[g.k], v)}
  for j = 1, g.k do c[j] = x[j + 1] end
  return x[1]
end

-- An entry at t with the costs of the group's limits (d.cost).
local function fmt_entry(g, t)
  local d = g.dims
  if g.k == 1 then return struct.pack('<dd', t, d[1].cost) end
  if g.k == 2 then return struct.pack('<ddd', t, d[1].cost, d[2].cost) end
  local x = {t}
  for j = 1, g.k do x[j + 1] = d[j].cost end
  return struct.pack(EF[g.k], unpack(x))
end

local function fmt_costs(g, t, costs)
  local x = {t}
  for j = 1, g.k do x[j + 1] = costs[j] end
  return struct.pack(EF[g.k], unpack(x))
end

local function unpack_g(g, v)
  if not v then return false end
  local x = {struct.unpack(GF[g.k], v)}
  g.hd, g.ha, g.fc, g.ft, g.fa, g.uc, g.ut, g.ua = x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8]
  for j, d in ipairs(g.dims) do
    local o = 4 + 4 * j
    d.sum, d.fp, d.up, d.fl = x[o + 1], x[o + 2], x[o + 3], x[o + 4]
  end
  return true
end

local function pack_g(g)
  local x = {g.hd, g.ha, g.fc, g.ft, g.fa, g.uc, g.ut, g.ua}
  for j, d in ipairs(g.dims) do
    local o = 4 + 4 * j
    x[o + 1], x[o + 2], x[o + 3], x[o + 4] = d.sum, d.fp, d.up, d.fl
  end
  return struct.pack(GF[g.k], unpack(x))
end

-- A limit of a group, as the scripts carry it (built whole: a table that
-- grows field by field is rehashed at every power of two).
local function new_dim(tag, configured, cost)
  return {tag = tag, configured = configured, cost = cost, sum = 0, fp = 0, up = 0, fl = 0,
    lim = configured, lu = nil, xc = nil, xu = nil, had_lim = false, had_x = false}
end

local function new_group(field, window, e, k)
  return {field = field, window = window, e = e, k = k, dims = {}, c = {0, 0, 0, 0},
    hd = 0, ha = -1, fc = 0, ft = 0, fa = -1, uc = 0, ut = 0, ua = -1}
end

-- The groups named by ARGV from o on: per group its state field, window
-- and number of limits k, then per limit its tag (and, with `full`, its
-- configured limit and cost); their entries hashes from KEYS[e0 + 1].
-- Returns the groups and the HMGET field list ('k' first).
local function groups_of(KEYS, ARGV, ng, o, e0, full)
  local groups = {}
  local names = {'k'}
  for i = 1, ng do
    local k = tonumber(ARGV[o + 2])
    local g = new_group(ARGV[o], tonumber(ARGV[o + 1]), KEYS[e0 + i], k)
    o = o + 3
    for j = 1, k do
      if full then
        g.dims[j] = new_dim(ARGV[o], tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]))
        o = o + 3
      else
        g.dims[j] = new_dim(ARGV[o], nil, 0)
        o = o + 1
      end
    end
    groups[i] = g
    names[i + 1] = g.field
  end
  return groups, names, o
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
-- (eviction) while the entries survived. Returns the oldest and newest
-- id.
local function recount(g)
  local lo, hi = nil, nil
  local all = redis.call('HGETALL', g.e)
  for i = 1, #all, 2 do
    local id = struct.unpack('<d', all[i])
    read_entry(g, all[i + 1])
    for j, d in ipairs(g.dims) do d.sum = d.sum + g.c[j] end
    if not lo or id < lo then lo = id end
    if not hi or id > hi then hi = id end
  end
  return lo, hi
end

local function set_cursors(g)
  g.ha = -1
  g.fc, g.ft, g.fa = g.hd - 1, 0, -1
  g.uc, g.ut, g.ua = g.hd - 1, 0, -1
  for _, d in ipairs(g.dims) do
    d.fp, d.up = 0, 0
  end
end

-- Reads a group's state from its field value v (and, only for a limit
-- whose flags say there may be one, its learned limit or external usage:
-- one more HMGET). A learned limit counts only with its expiry (lu:<tag>)
-- still ahead. Limits without a configured value (a script that touches
-- one limit only) keep their fields as they are. Returns the newest id
-- the entries hold when they had to be recounted (nil otherwise); g.hd is
-- then nil when there were none, for load_groups to set.
local function load_group(h, g, T, v)
  local hi = nil
  if not unpack_g(g, v) then
    -- A new group, a fresh key, or a lost state hash.
    local lo
    lo, hi = recount(g)
    g.hd = lo
    for _, d in ipairs(g.dims) do d.fl = 3 end
    if lo then set_cursors(g) end
  end
  for _, d in ipairs(g.dims) do
    d.had_lim, d.had_x = d.fl % 2 == 1, d.fl >= 2
    if d.configured and d.fl > 0 then
      local tg = d.tag
      local x = redis.call('HMGET', h, 'lim:' .. tg, 'lu:' .. tg, 'xc:' .. tg, 'xu:' .. tg)
      local lim, lu = num(x[1]), num(x[2])
      if lim and lu and lu > T then
        d.lim = lim
        d.lu = lu
      end
      d.xc, d.xu = num(x[3]), num(x[4])
      if not (d.xc and d.xu) or d.xu <= T then
        d.xc = nil
        d.xu = nil
      end
    end
  end
  return hi
end

-- Loads every group (their fields at v[2 ..], in order) and settles the
-- next id: the stored one, or, when the state hash was lost but entries
-- survived, the one after the newest entry (the incarnation goes on: its
-- ids must not jump, or pruning would walk the gap), or else T (a new
-- incarnation: a late cancel of an expired one cannot hit a new
-- reservation). Returns the next id.
local function load_groups(h, groups, T, nextid, v)
  local hi = nil
  for i, g in ipairs(groups) do
    local x = load_group(h, g, T, v[i + 1])
    if x and (not hi or x > hi) then hi = x end
  end
  if not nextid then
    nextid = T
    if hi then nextid = hi + 1 end
  elseif hi and hi >= nextid then
    nextid = hi + 1
  end
  for _, g in ipairs(groups) do
    if not g.hd then
      g.hd = nextid
      set_cursors(g)
    end
  end
  return nextid
end

-- Drops the entries that no longer count at T, oldest first (each entry
-- once in its life: amortised O(1)). ha, the instant of the oldest entry
-- (or a lower bound: a cancelled oldest entry leaves it), spares the read
-- while that entry still counts. The cursors that fall behind the oldest
-- entry start again from it, ha telling them where the next entry is.
local function prune_group(g, T, nextid)
  if not (g.ha >= 0 and g.ha + g.window > T) then
    g.ha = -1
    local dims, c = g.dims, g.c
    while g.hd < nextid do
      local f = idf(g.hd)
      local v = redis.call('HGET', g.e, f)
      if v then
        local at = read_entry(g, v)
        if at + g.window > T then
          g.ha = at
          break
        end
        redis.call('HDEL', g.e, f)
        for j = 1, g.k do
          local d = dims[j]
          d.sum = d.sum - c[j]
          if g.hd <= g.fc then d.fp = d.fp - c[j] end
          if g.hd <= g.uc then d.up = d.up - c[j] end
        end
      end
      g.hd = g.hd + 1
    end
  end
  if g.fc < g.hd - 1 then
    g.fc, g.fa = g.hd - 1, g.ha
    for _, d in ipairs(g.dims) do d.fp = 0 end
  end
  if g.uc < g.hd - 1 then
    g.uc, g.ua = g.hd - 1, g.ha
    for _, d in ipairs(g.dims) do d.up = 0 end
  end
end

-- Moves a cursor (ids up to c, each with at <= t0, their costs in each
-- limit's field pk; a: the instant of the entry after it, or a lower
-- bound, -1: unknown) to theta: forward over the entries with at <= theta
-- (it stops at the first later one: exact, the entries being in order; a
-- known later a spares the read), or, when theta went back, backward over
-- the entries past it. Returns c, a.
local function advance(g, c, t0, a, theta, nextid, pk)
  local dims, cs = g.dims, g.c
  if c < g.hd - 1 then
    c, a = g.hd - 1, -1
    for _, d in ipairs(dims) do d[pk] = 0 end
  end
  if theta >= t0 then
    if a >= 0 and a > theta then return c, a end
    a = -1
    while c + 1 < nextid do
      local v = redis.call('HGET', g.e, idf(c + 1))
      if v then
        local at = read_entry(g, v)
        if at > theta then
          a = at
          break
        end
        for j = 1, g.k do
          local d = dims[j]
          d[pk] = d[pk] + cs[j]
        end
      end
      c = c + 1
    end
  else
    a = -1
    while c >= g.hd do
      local v = redis.call('HGET', g.e, idf(c))
      if v then
        local at = read_entry(g, v)
        if at <= theta then break end
        for j = 1, g.k do
          local d = dims[j]
          d[pk] = d[pk] - cs[j]
        end
        a = at
      end
      c = c - 1
    end
  end
  return c, a
end

-- The free cursor at base: every entry it covers no longer counts at base.
local function free_at(g, base, nextid)
  local theta = base - g.window
  g.fc, g.fa = advance(g, g.fc, g.ft, g.fa, theta, nextid, 'fp')
  g.ft = theta
end

-- The used cursor at T.
local function used_at(g, T, nextid)
  g.uc, g.ua = advance(g, g.uc, g.ut, g.ua, T, nextid, 'up')
  g.ut = T
end

-- A new entry (id, at t, the costs d.cost) joins the group: the running
-- sums, and the caches of the oldest entry and of the cursors that end
-- just before it (the used cursor takes it in at once when it has started
-- by T).
local function add_entry(g, id, t)
  local used = g.uc == id - 1 and t <= g.ut
  for _, d in ipairs(g.dims) do
    d.sum = d.sum + d.cost
    if used then d.up = d.up + d.cost end
  end
  if g.hd == id and g.ha < 0 then g.ha = t end
  if g.fc == id - 1 and g.fa < 0 then g.fa = t end
  if used then
    g.uc = id
  elseif g.uc == id - 1 and g.ua < 0 then
    g.ua = t
  end
end

-- The earliest t >= base at which the entries leave room for cost within
-- budget in the group's j-th limit d (nil when cost > budget), base being
-- at or after the free cursor's base. O(1) when it fits by the running
-- sum; else it reads the entries past the cursor, oldest first, only
-- until enough of them have stopped counting.
local function earliest_with(g, j, d, base, cost, budget, nextid)
  if cost > budget then return nil end
  local allowed = budget - cost
  local rest = d.sum - d.fp
  local t = base
  local i = g.fc
  while rest > allowed and i + 1 < nextid do
    i = i + 1
    local v = redis.call('HGET', g.e, idf(i))
    if v then
      local at = read_entry(g, v)
      rest = rest - g.c[j]
      local free = at + g.window
      if free > t then t = free end
    end
  end
  return t
end

-- The earliest t >= base that fits cost under limit lim, with the
-- external usage counted until it expires.
local function earliest_under(g, j, d, base, cost, lim, nextid)
  local plain = earliest_with(g, j, d, base, cost, lim, nextid)
  if not plain then return nil end
  if d.xu and plain < d.xu then
    local b = lim - d.xc
    if b < 0 then b = 0 end
    local t = earliest_with(g, j, d, base, cost, b, nextid)
    if t and t < d.xu then return t end
    return d.xu
  end
  return plain
end

-- The earliest t >= base that fits the cost of the group's j-th limit;
-- nil only when it exceeds the configured limit (a learned limit expires,
-- so it never makes a request "never fit"). The learned limit holds
-- before its expiry d.lu, the configured one from then on.
local function earliest_dim(g, j, base, nextid)
  local d = g.dims[j]
  local cost = d.cost
  if cost > d.configured then return nil end
  if not d.lu then return earliest_under(g, j, d, base, cost, d.lim, nextid) end
  local t = earliest_under(g, j, d, base, cost, d.lim, nextid)
  if t and t < d.lu then return t end
  local b = base
  if d.lu > b then b = d.lu end
  return earliest_under(g, j, d, b, cost, d.configured, nextid)
end

-- Sets a key's expiry to at least ttl milliseconds (never shortens it:
-- another process may have configured a longer window).
local function extend(k, ttl)
  local cur = redis.call('PTTL', k)
  if cur == -2 then return end
  if cur < ttl then redis.call('PEXPIRE', k, ttl) end
end

-- Appends a limit's learned fields to an HSET argument list, and the ones
-- to delete to an HDEL list; sets its flags. A limit the script did not
-- load (no configured value) keeps its fields and flags.
local function dim_fields(d, set, del)
  if not d.configured then return end
  local tg = d.tag
  local learned = d.lu and d.lim ~= d.configured
  d.fl = (learned and 1 or 0) + (d.xu and 2 or 0)
  if learned then
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

-- Writes the state back (one HSET, an HDEL only when a learned field
-- ends) and keeps every key alive as long as something in it still
-- counts, plus one second. The expiry is pushed in steps (kw.ex: the time
-- every key lives at least until; each step reaches up to 250 ms beyond
-- the need), so that most calls touch no expiry at all. kw holds the
-- key-wide fields, fresh the keys this call may have created (their
-- expiry is set at once). The token generations keep their own expiry.
local function save(h, q, groups, T, kw, fresh)
  local set = {'k', false}
  local del = {}
  local maxw = 0
  local horizon = T
  for _, g in ipairs(groups) do
    for _, d in ipairs(g.dims) do
      dim_fields(d, set, del)
      if d.lu and d.lim ~= d.configured and d.lu > horizon then horizon = d.lu end
      if d.xu and d.xu > horizon then horizon = d.xu end
    end
    set[#set + 1] = g.field
    set[#set + 1] = pack_g(g)
    if g.window > maxw then maxw = g.window end
  end
  if kw.gate and kw.gate > horizon then horizon = kw.gate end
  if kw.last and kw.last > horizon then horizon = kw.last end
  if kw.tb and kw.tb > horizon then horizon = kw.tb end
  local need = horizon + maxw + 1000000
  local stepped = not kw.ex or need > kw.ex
  if stepped then
    local slack = math.floor(maxw / 2)
    if slack > 250000 then slack = 250000 end
    kw.ex = need + slack
  end
  set[2] = pack_k(kw)
  redis.call('HSET', h, unpack(set))
  if #del > 0 then redis.call('HDEL', h, unpack(del)) end
  local ttl = math.ceil((kw.ex - T) / 1000)
  if stepped then
    extend(h, ttl)
    extend(q, ttl)
    for _, g in ipairs(groups) do extend(g.e, ttl) end
  else
    for _, k in ipairs(fresh) do extend(k, ttl) end
  end
end

-- Takes reservation id out of the groups (its costs out of the running
-- sums and the cursors that cover it) and, when it was booked ahead, out
-- of the FIFO queue, moving the tail back to the newest reservation left
-- ahead of now. Returns 1 when the reservation was found.
local function cancel_id(h, q, id, groups, names)
  local found = 0
  local v = redis.call('HMGET', h, unpack(names))
  local kw = unpack_k(v[1])
  local upd = {}
  local f = idf(id)
  for i, g in ipairs(groups) do
    local e = redis.call('HGET', g.e, f)
    if e then
      read_entry(g, e)
      redis.call('HDEL', g.e, f)
      if unpack_g(g, v[1 + i]) then
        for j, d in ipairs(g.dims) do
          local c = g.c[j]
          d.sum = d.sum - c
          if id <= g.fc then d.fp = d.fp - c end
          if id <= g.uc then d.up = d.up - c end
        end
        upd[#upd + 1] = g.field
        upd[#upd + 1] = pack_g(g)
      end
      found = 1
    end
  end
  if v[1] and redis.call('ZREM', q, int(id)) == 1 then
    -- Booked ahead: the tail is the newest reservation left ahead of now.
    redis.call('ZREMRANGEBYSCORE', q, '-inf', int(now_of(kw.tm)))
    local top = redis.call('ZREVRANGE', q, 0, 0, 'WITHSCORES')
    kw.last = nil
    if top[2] then kw.last = tonumber(top[2]) end
    upd[#upd + 1] = 'k'
    upd[#upd + 1] = pack_k(kw)
  end
  if #upd > 0 then redis.call('HSET', h, unpack(upd)) end
  return found
end
