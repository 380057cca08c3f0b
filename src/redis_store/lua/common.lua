-- Shared helpers of the rate-limit scripts. Each script is a function of
-- (KEYS, ARGV): loaded once as a Redis function library (FCALL), or, on a
-- server without functions, sent as a script (EVALSHA) with these helpers
-- before it (see scripts.rs).
-- Times are microseconds on the Redis server's clock (TIME, never taken
-- backwards: see now_of); every number stays below 2^53 so that Lua's
-- doubles hold it exactly.
--
-- Layout 3 of one limiter key (all under one hash tag {prefix:key}, and
-- under {prefix:key}:3:, so that no name is one of an older layout's).
-- The limits of a key are grouped by window: one group holds every limit
-- with that window (requests and tokens per minute are one group), and
-- shares one entry per reservation, one set of cursors and one field of
-- state. Numbers are stored as little-endian doubles (struct.pack: exact
-- below 2^53), ids too (as hash fields), which Lua reads and writes far
-- faster than decimal text.
--   KEYS[1] = {prefix:key}:3:s  hash:
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
--   KEYS[2] = {prefix:key}:3:q  sorted set: the reservations booked ahead of
--     their acquire's now (member id, score at), for the FIFO tail after a
--     cancel
--   {prefix:key}:3:e:<group>  hash: reservation id (packed) -> (at, the
--     cost in each limit of the group), one field per reservation with a
--     cost in the group
--   {prefix:key}:3:t0, :3:t1  hashes, two generations of acquire tokens:
--     token -> reservation id (packed), or 'c' once cancelled by token
--   {prefix:key}:3:k:<token>  'c': a tombstone, left by a cancel by token
--     that arrived before its acquire (the acquire then reserves nothing);
--     or the record of an acquire booked further ahead than a token
--     generation lasts
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
-- Written for Redis's one thread, where every redis.call, table field and
-- number to text conversion costs of the order of a microsecond: in
-- memory a key's fields and a group's state are the arrays struct.unpack
-- gives (the constants below name their slots), and a limit's learned
-- state is a table only when something was learned.

-- The key-wide fields (k); -1: none.
local ID, TM, GATE, LAST, EX, TB, TG, TP = 1, 2, 3, 4, 5, 6, 7, 8
-- A group's state (g.s): its cursors, then 4 slots per limit j from
-- 4 j + 4 on.
local HD, HA, FC, FT, FA, UC, UT, UA = 1, 2, 3, 4, 5, 6, 7, 8
local SUM, FP, UP, FL = 1, 2, 3, 4
-- A group's limits (g.d): 4 slots per limit j from 4 j - 4 on (LRN: the
-- learned state, or false).
local TAG, CFG, COST, LRN = 1, 2, 3, 4

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

local KF = '<dddddddd'

local function unpack_k(v)
  if not v then return {-1, -1, -1, -1, -1, -1, -1, 0} end
  return {struct.unpack(KF, v)}
end

local function pack_k(K)
  return struct.pack(KF, K[1], K[2], K[3], K[4], K[5], K[6], K[7], K[8])
end

-- The state of a group: 8 cursor slots, then 4 per limit.
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

-- An entry at t with the costs of the group's limits.
local function fmt_entry(g, t)
  local d = g.d
  if g.k == 1 then return struct.pack('<dd', t, d[COST]) end
  if g.k == 2 then return struct.pack('<ddd', t, d[COST], d[4 + COST]) end
  local x = {t}
  for j = 1, g.k do x[j + 1] = d[4 * j - 4 + COST] end
  return struct.pack(EF[g.k], unpack(x))
end

local function fmt_costs(g, t, costs)
  local x = {t}
  for j = 1, g.k do x[j + 1] = costs[j] end
  return struct.pack(EF[g.k], unpack(x))
end

local function pack_g(g)
  return struct.pack(GF[g.k], unpack(g.s, 1, 8 + 4 * g.k))
end

-- The format of n packed numbers, made once per n (in a function
-- library, once per server).
local FMT = {}
local function fmt_of(n)
  local f = FMT[n]
  if not f then
    f = '<' .. string.rep('d', n)
    FMT[n] = f
  end
  return f
end

local function new_group(f, w, e, k)
  return {f = f, w = w, e = e, k = k, s = false, c = {0, 0, 0, 0},
    d = {false, false, false, false, false, false, false, false,
      false, false, false, false, false, false, false, false}}
end

-- The groups of an acquire: their numbers packed in N from index o on
-- (per group its window and number of limits k, then per limit its
-- configured limit and cost), their names from ARGV[a] on (per group its
-- state field, then per limit its tag), their entries hashes from
-- KEYS[3]. Returns the groups and the HMGET field list ('k' first).
local function groups_packed(KEYS, ARGV, N, ng, o, a)
  local groups = {}
  local names = {'k'}
  for i = 1, ng do
    local k = N[o + 1]
    local g = new_group(ARGV[a], N[o], KEYS[2 + i], k)
    groups[i] = g
    names[i + 1] = ARGV[a]
    o, a = o + 2, a + 1
    local d = g.d
    for j = 1, k do
      local x = 4 * j - 4
      d[x + TAG], d[x + CFG], d[x + COST] = ARGV[a], N[o], N[o + 1]
      o, a = o + 2, a + 1
    end
  end
  return groups, names
end

-- The groups named by ARGV from o on: per group its state field, window
-- and number of limits k, then per limit its tag; their entries hashes
-- from KEYS[e0 + 1]. Returns the groups, the HMGET field list ('k' first)
-- and the next argument's index.
local function groups_of(KEYS, ARGV, ng, o, e0)
  local groups = {}
  local names = {'k'}
  for i = 1, ng do
    local k = tonumber(ARGV[o + 2])
    local g = new_group(ARGV[o], tonumber(ARGV[o + 1]), KEYS[e0 + i], k)
    groups[i] = g
    names[i + 1] = ARGV[o]
    o = o + 3
    for j = 1, k do
      g.d[4 * j - 4 + TAG] = ARGV[o]
      g.d[4 * j - 4 + COST] = 0
      o = o + 1
    end
  end
  return groups, names, o
end

-- The key's clock: the server's, never before the latest time a script of
-- this key saw (a wall clock stepped back must not break the order of the
-- entries, which the cursors rely on).
local function now_of(tm)
  local T = now_us()
  if tm > T then T = tm end
  return T
end

-- Counts an entries hash from scratch: only when the state hash was lost
-- (eviction) while the entries survived. Returns the oldest and newest
-- id.
local function recount(g)
  local lo, hi = nil, nil
  local s = g.s
  local all = redis.call('HGETALL', g.e)
  for i = 1, #all, 2 do
    local id = struct.unpack('<d', all[i])
    read_entry(g, all[i + 1])
    for j = 1, g.k do
      local o = 4 * j + 4
      s[o + SUM] = s[o + SUM] + g.c[j]
    end
    if not lo or id < lo then lo = id end
    if not hi or id > hi then hi = id end
  end
  return lo, hi
end

local function set_cursors(g)
  local s = g.s
  local c = s[HD] - 1
  s[HA] = -1
  s[FC], s[FT], s[FA] = c, 0, -1
  s[UC], s[UT], s[UA] = c, 0, -1
  for j = 1, g.k do
    local o = 4 * j + 4
    s[o + FP], s[o + UP] = 0, 0
  end
end

-- Limit j's learned state: a learned limit (with its expiry lu) and
-- usage we did not see (xc, until xu), and whether their fields exist.
local function learned_of(g, j)
  local x = 4 * j - 4
  local L = g.d[x + LRN]
  if not L then
    L = {lim = g.d[x + CFG], lu = nil, xc = nil, xu = nil, had_lim = false, had_x = false}
    g.d[x + LRN] = L
  end
  return L
end

-- Reads a group's state from its field value v (and, only for a limit
-- whose flags say there may be one, its learned limit or external usage:
-- one more HMGET). A learned limit counts only with its expiry (lu:<tag>)
-- still ahead. Limits without a configured value (a script that touches
-- one limit only) keep their fields as they are. Returns the newest id
-- the entries hold when they had to be recounted (nil otherwise); the
-- oldest is then HD, -1 when there were none, for load_groups to set.
local function load_group(h, g, T, v)
  local hi = nil
  local s
  if v then
    s = {struct.unpack(GF[g.k], v)}
    g.s = s
  else
    -- A new group, a fresh key, or a lost state hash.
    s = {-1, -1, 0, 0, -1, 0, 0, -1}
    for j = 1, g.k do
      local o = 4 * j + 4
      s[o + SUM], s[o + FP], s[o + UP], s[o + FL] = 0, 0, 0, 3
    end
    g.s = s
    local lo
    lo, hi = recount(g)
    if lo then
      s[HD] = lo
      set_cursors(g)
    end
  end
  local d = g.d
  for j = 1, g.k do
    local fl = s[4 * j + 4 + FL]
    local x = 4 * j - 4
    if fl > 0 and d[x + CFG] then
      local L = learned_of(g, j)
      L.had_lim, L.had_x = fl % 2 == 1, fl >= 2
      local tg = d[x + TAG]
      local r = redis.call('HMGET', h, 'lim:' .. tg, 'lu:' .. tg, 'xc:' .. tg, 'xu:' .. tg)
      local lim, lu = num(r[1]), num(r[2])
      if lim and lu and lu > T then
        L.lim = lim
        L.lu = lu
      end
      L.xc, L.xu = num(r[3]), num(r[4])
      if not (L.xc and L.xu) or L.xu <= T then
        L.xc = nil
        L.xu = nil
      end
    end
  end
  return hi
end

-- Loads every group (their fields at v[2 ..], in order) and settles the
-- next id: the stored one (-1: none), or, when the state hash was lost
-- but entries survived, the one after the newest entry (the incarnation
-- goes on: its ids must not jump, or pruning would walk the gap), or else
-- T (a new incarnation: a late cancel of an expired one cannot hit a new
-- reservation). Returns the next id.
local function load_groups(h, groups, T, nextid, v)
  local hi = nil
  for i, g in ipairs(groups) do
    local x = load_group(h, g, T, v[i + 1])
    if x and (not hi or x > hi) then hi = x end
  end
  if nextid < 0 then
    nextid = T
    if hi then nextid = hi + 1 end
  elseif hi and hi >= nextid then
    nextid = hi + 1
  end
  for _, g in ipairs(groups) do
    if g.s[HD] < 0 then
      g.s[HD] = nextid
      set_cursors(g)
    end
  end
  return nextid
end

-- Drops the entries that no longer count at T, oldest first (each entry
-- once in its life: amortised O(1)). HA, the instant of the oldest entry
-- (or a lower bound: a cancelled oldest entry leaves it), spares the read
-- while that entry still counts. The cursors that fall behind the oldest
-- entry start again from it, HA telling them where the next entry is.
local function prune_group(g, T, nextid)
  local s = g.s
  if not (s[HA] >= 0 and s[HA] + g.w > T) then
    s[HA] = -1
    local c = g.c
    while s[HD] < nextid do
      local hd = s[HD]
      local f = idf(hd)
      local v = redis.call('HGET', g.e, f)
      if v then
        local at = read_entry(g, v)
        if at + g.w > T then
          s[HA] = at
          break
        end
        redis.call('HDEL', g.e, f)
        for j = 1, g.k do
          local o = 4 * j + 4
          s[o + SUM] = s[o + SUM] - c[j]
          if hd <= s[FC] then s[o + FP] = s[o + FP] - c[j] end
          if hd <= s[UC] then s[o + UP] = s[o + UP] - c[j] end
        end
      end
      s[HD] = hd + 1
    end
  end
  local c = s[HD] - 1
  if s[FC] < c then
    s[FC], s[FA] = c, s[HA]
    for j = 1, g.k do s[4 * j + 4 + FP] = 0 end
  end
  if s[UC] < c then
    s[UC], s[UA] = c, s[HA]
    for j = 1, g.k do s[4 * j + 4 + UP] = 0 end
  end
end

-- Moves a cursor (slots ci: ids up to it, each with at <= s[ti], their
-- costs in each limit's slot pi; ai: the instant of the entry after it,
-- or a lower bound, -1: unknown) to theta: forward over the entries with
-- at <= theta (it stops at the first later one: exact, the entries being
-- in order; a known later instant spares the read), or, when theta went
-- back, backward over the entries past it.
local function advance(g, ci, ti, ai, pi, theta, nextid)
  local s, cs = g.s, g.c
  local c, a = s[ci], s[ai]
  if c < s[HD] - 1 then
    c, a = s[HD] - 1, -1
    for j = 1, g.k do s[4 * j + 4 + pi] = 0 end
  end
  if theta >= s[ti] then
    if not (a >= 0 and a > theta) then
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
            local o = 4 * j + 4 + pi
            s[o] = s[o] + cs[j]
          end
        end
        c = c + 1
      end
    end
  else
    a = -1
    while c >= s[HD] do
      local v = redis.call('HGET', g.e, idf(c))
      if v then
        local at = read_entry(g, v)
        if at <= theta then break end
        for j = 1, g.k do
          local o = 4 * j + 4 + pi
          s[o] = s[o] - cs[j]
        end
        a = at
      end
      c = c - 1
    end
  end
  s[ci], s[ai], s[ti] = c, a, theta
end

-- The free cursor at base: every entry it covers no longer counts at base.
local function free_at(g, base, nextid)
  advance(g, FC, FT, FA, FP, base - g.w, nextid)
end

-- The used cursor at T.
local function used_at(g, T, nextid)
  advance(g, UC, UT, UA, UP, T, nextid)
end

-- A new entry (id, at t, the limits' costs) joins the group: the running
-- sums, and the caches of the oldest entry and of the cursors that end
-- just before it (the used cursor takes it in at once when it has started
-- by T).
local function add_entry(g, id, t)
  local s, d = g.s, g.d
  local used = s[UC] == id - 1 and t <= s[UT]
  for j = 1, g.k do
    local o, c = 4 * j + 4, d[4 * j - 4 + COST]
    s[o + SUM] = s[o + SUM] + c
    if used then s[o + UP] = s[o + UP] + c end
  end
  if s[HD] == id and s[HA] < 0 then s[HA] = t end
  if s[FC] == id - 1 and s[FA] < 0 then s[FA] = t end
  if used then
    s[UC] = id
  elseif s[UC] == id - 1 and s[UA] < 0 then
    s[UA] = t
  end
end

-- The earliest t >= base at which the entries leave room for cost within
-- budget in the group's limit j (nil when cost > budget), base being at
-- or after the free cursor's base. O(1) when it fits by the running sum;
-- else it reads the entries past the cursor, oldest first, only until
-- enough of them have stopped counting.
local function earliest_with(g, j, base, cost, budget, nextid)
  if cost > budget then return nil end
  local s = g.s
  local o = 4 * j + 4
  local allowed = budget - cost
  local rest = s[o + SUM] - s[o + FP]
  local t = base
  local i = s[FC]
  while rest > allowed and i + 1 < nextid do
    i = i + 1
    local v = redis.call('HGET', g.e, idf(i))
    if v then
      local at = read_entry(g, v)
      rest = rest - g.c[j]
      local free = at + g.w
      if free > t then t = free end
    end
  end
  return t
end

-- The earliest t >= base that fits cost under limit lim, with the
-- external usage (L) counted until it expires.
local function earliest_under(g, j, L, base, cost, lim, nextid)
  local plain = earliest_with(g, j, base, cost, lim, nextid)
  if not plain then return nil end
  if L.xu and plain < L.xu then
    local b = lim - L.xc
    if b < 0 then b = 0 end
    local t = earliest_with(g, j, base, cost, b, nextid)
    if t and t < L.xu then return t end
    return L.xu
  end
  return plain
end

-- The earliest t >= base that fits the cost of the group's limit j; nil
-- only when it exceeds the configured limit (a learned limit expires, so
-- it never makes a request "never fit"). The learned limit holds before
-- its expiry lu, the configured one from then on.
local function earliest_dim(g, j, base, nextid)
  local x = 4 * j - 4
  local d = g.d
  local cost, cfg, L = d[x + COST], d[x + CFG], d[x + LRN]
  if cost > cfg then return nil end
  if not L then return earliest_with(g, j, base, cost, cfg, nextid) end
  if not L.lu then return earliest_under(g, j, L, base, cost, L.lim, nextid) end
  local t = earliest_under(g, j, L, base, cost, L.lim, nextid)
  if t and t < L.lu then return t end
  local b = base
  if L.lu > b then b = L.lu end
  return earliest_under(g, j, L, b, cost, cfg, nextid)
end

-- Sets a key's expiry to at least ttl milliseconds (never shortens it:
-- another process may have configured a longer window).
local function extend(k, ttl)
  local cur = redis.call('PTTL', k)
  if cur == -2 then return end
  if cur < ttl then redis.call('PEXPIRE', k, ttl) end
end

-- Appends limit j's learned fields to an HSET argument list, and the ones
-- to delete to an HDEL list; sets its flags. Returns the latest instant
-- they count until (0: none). A limit the script did not load (no
-- configured value) keeps its fields and flags.
local function dim_fields(g, j, set, del)
  local x = 4 * j - 4
  local cfg, L = g.d[x + CFG], g.d[x + LRN]
  if not (cfg and L) then return 0 end
  local tg = g.d[x + TAG]
  local until_ = 0
  local learned = L.lu and L.lim ~= cfg
  g.s[4 * j + 4 + FL] = (learned and 1 or 0) + (L.xu and 2 or 0)
  if learned then
    set[#set + 1] = 'lim:' .. tg
    set[#set + 1] = int(L.lim)
    set[#set + 1] = 'lu:' .. tg
    set[#set + 1] = int(L.lu)
    until_ = L.lu
  elseif L.had_lim then
    del[#del + 1] = 'lim:' .. tg
    del[#del + 1] = 'lu:' .. tg
  end
  if L.xu then
    set[#set + 1] = 'xc:' .. tg
    set[#set + 1] = int(L.xc)
    set[#set + 1] = 'xu:' .. tg
    set[#set + 1] = int(L.xu)
    if L.xu > until_ then until_ = L.xu end
  elseif L.had_x then
    del[#del + 1] = 'xc:' .. tg
    del[#del + 1] = 'xu:' .. tg
  end
  return until_
end

-- Writes the state back (one HSET, an HDEL only when a learned field
-- ends) and keeps every key alive as long as something in it still
-- counts, plus one second. The expiry is pushed in steps (K[EX]: the time
-- every key lives at least until; each step reaches up to 250 ms beyond
-- the need), so that most calls touch no expiry at all. K holds the
-- key-wide fields, fresh the keys this call may have created (their
-- expiry is set at once; nil: none). The token generations keep their own
-- expiry.
local function save(h, q, groups, T, K, fresh)
  local set = {'k', false}
  local del = {}
  local maxw = 0
  local horizon = T
  for _, g in ipairs(groups) do
    for j = 1, g.k do
      local u = dim_fields(g, j, set, del)
      if u > horizon then horizon = u end
    end
    set[#set + 1] = g.f
    set[#set + 1] = pack_g(g)
    if g.w > maxw then maxw = g.w end
  end
  if K[GATE] > horizon then horizon = K[GATE] end
  if K[LAST] > horizon then horizon = K[LAST] end
  if K[TB] > horizon then horizon = K[TB] end
  local need = horizon + maxw + 1000000
  local stepped = need > K[EX]
  if stepped then
    local slack = math.floor(maxw / 2)
    if slack > 250000 then slack = 250000 end
    K[EX] = need + slack
  end
  set[2] = pack_k(K)
  redis.call('HSET', h, unpack(set))
  if #del > 0 then redis.call('HDEL', h, unpack(del)) end
  if stepped or fresh then
    local ttl = math.ceil((K[EX] - T) / 1000)
    if stepped then
      extend(h, ttl)
      extend(q, ttl)
      for _, g in ipairs(groups) do extend(g.e, ttl) end
    else
      for _, k in ipairs(fresh) do extend(k, ttl) end
    end
  end
end

-- Takes reservation id out of the groups (its costs out of the running
-- sums and the cursors that cover it) and, when it was booked ahead, out
-- of the FIFO queue, moving the tail back to the newest reservation left
-- ahead of now. Returns 1 when the reservation was found.
local function cancel_id(h, q, id, groups, names)
  local found = 0
  local v = redis.call('HMGET', h, unpack(names))
  local K = unpack_k(v[1])
  local upd = {}
  local f = idf(id)
  for i, g in ipairs(groups) do
    local e = redis.call('HGET', g.e, f)
    if e then
      read_entry(g, e)
      redis.call('HDEL', g.e, f)
      if v[1 + i] then
        local s = {struct.unpack(GF[g.k], v[1 + i])}
        g.s = s
        for j = 1, g.k do
          local o, c = 4 * j + 4, g.c[j]
          s[o + SUM] = s[o + SUM] - c
          if id <= s[FC] then s[o + FP] = s[o + FP] - c end
          if id <= s[UC] then s[o + UP] = s[o + UP] - c end
        end
        upd[#upd + 1] = g.f
        upd[#upd + 1] = pack_g(g)
      end
      found = 1
    end
  end
  if v[1] and redis.call('ZREM', q, int(id)) == 1 then
    -- Booked ahead: the tail is the newest reservation left ahead of now.
    redis.call('ZREMRANGEBYSCORE', q, '-inf', int(now_of(K[TM])))
    local top = redis.call('ZREVRANGE', q, 0, 0, 'WITHSCORES')
    K[LAST] = -1
    if top[2] then K[LAST] = tonumber(top[2]) end
    upd[#upd + 1] = 'k'
    upd[#upd + 1] = pack_k(K)
  end
  if #upd > 0 then redis.call('HSET', h, unpack(upd)) end
  return found
end
