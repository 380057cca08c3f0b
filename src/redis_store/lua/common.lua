-- Shared helpers of the rate-limit scripts. Each script is a function of
-- (KEYS, ARGV): loaded once as a Redis function library (FCALL), or, on a
-- server without functions, sent as a script (EVALSHA) with these helpers
-- before it (see scripts.rs).
-- Times are microseconds on the Redis server's clock (TIME, never taken
-- backwards: see now_of); every number stays below 2^53 so that Lua's
-- doubles hold it exactly.
--
-- Layout 4 of one limiter key: everything under one hash tag
-- {prefix:key} (one Cluster slot), under {prefix:key}:4: so that no name
-- is one of an older layout's, and named after the key's limits (its
-- shape, below) so that processes configured differently for one key
-- never read each other's numbers. A script is given the hash's name
-- (KEYS) and derives the others from it.
--   {prefix:key}:4:<shape>  hash (h):
--     s = the state, packed: the key-wide fields (id: the next
--         reservation id, tm: the latest server time seen, gate, last:
--         the FIFO tail, ex: until when every key lives at least, tb:
--         until when a tombstone may exist; -1: none), then per group:
--         hd (the oldest reservation id that may still count in it), ha
--         (the instant of entry hd, or a lower bound; -1: unknown), fc ft
--         fa (the "free" cursor: the entries with an id up to fc each
--         have at <= ft, so they no longer count from ft + hold on; fa:
--         the instant of the entry after fc, or a lower bound, -1:
--         unknown), uc ut ua (the "used" cursor: the same with at <= ut,
--         the latest `now` of a call), then per limit of the group sum
--         (the cost of its live entries: a running sum), fp and up (the
--         cost the two cursors cover), fl (1: lim:/lu: fields may exist,
--         2: xc:/xu: fields may exist, 3: both)
--     <id, packed> = a reservation: its instant, its cost in each limit of
--         the shape (NONE where it cost nothing when admitted), and its
--         acquire's token; one entry for every group
--         (each counts it while it is in its window; the group that holds
--         entries longest deletes it)
--     t<token> = the reservation id (packed) of the acquire with that
--         token, for a cancel by a caller that never got the answer; it
--         goes with the entry
--     h = a value longer than a hash's list encoding allows (see AS_TABLE)
--     lim:<tag>, lu:<tag>  a learned limit and its expiry (decimal)
--     xc:<tag>, xu:<tag>   usage we did not see, and until when it counts
--     xh:<tag>             the newest reservation whose `remaining` was
--                          compared as of its admission (older ones are
--                          stale); read and written by learn only
--   <h>:q  sorted set: the reservations booked ahead of their acquire's
--     now (member id, score at), for the FIFO tail after a cancel
--   <h>:k:<token>  'c': a tombstone, left by a cancel by token that arrived
--     before its acquire (the acquire then reserves nothing), or after it
--     gave the reservation back (a repeated cancel is a no-op)
-- A shape is its groups: the limits of a key grouped by window, each
-- group's name "<codes>:<window in microseconds>" (codes in the order r t
-- i o), its limits' tags "<code>:<window in microseconds>". A group's
-- hold (how long an entry counts) is its window plus the arrival margin,
-- sent with every call.
--
-- No script reads a whole window: ids are consecutive per key and `at`
-- never decreases with the id, so each entry is read by id (HGET, O(1)),
-- pruning pops from the oldest id, and the two cursors only move forward
-- (except after a cancel of the FIFO tail, a few entries back): each entry
-- is visited a bounded number of times over its life, whatever the
-- window's traffic.
--
-- Written for Redis's one thread, where every redis.call costs some
-- 6,000-9,000 instructions, every argument of a call some 1,300, a table
-- some 1,500 (with its share of garbage collection), a struct call some
-- 700 and a global some 160: the acquire takes a batch of decisions in
-- one call (one TIME, one read and one write of each key however many of
-- its decisions the batch holds), a key's whole state is one packed
-- field read into one array (the constants below name its slots), and
-- the standard functions are upvalues.

-- The standard functions, as upvalues. A library's top level cannot
-- reach them (only `redis`), so each script's entry calls init().
local rcall, spack, sunpack, ssub, sfind, sfmt, srep, tonum, unpk, floor, ceil, prs
-- An entry's cost in a limit where the reservation cost nothing when it
-- was admitted: -0, which counts as 0 but tells a correction that, as in
-- the in-memory window (which keeps no entry there), there is nothing to
-- correct. (Made at run time: the compiler folds -0 into 0.)
local NONE

local function init()
  if rcall then return end
  rcall, spack, sunpack = redis.call, struct.pack, struct.unpack
  ssub, sfind, sfmt, srep = string.sub, string.find, string.format, string.rep
  tonum, unpk, floor, ceil, prs = tonumber, unpack, math.floor, math.ceil, pairs
  NONE = -tonum('0')
end

-- Whether an entry's cost c is NONE.
local function none(c)
  return c == 0 and 1 / c < 0
end

-- The key-wide slots of the state S; -1: none.
local ID, TM, GATE, LAST, EX, TB = 1, 2, 3, 4, 5, 6
-- A group's slots, from its offset o: S[o + HD] ...; then 4 per limit j
-- from o + 4 j + 4: S[o + 4 j + 4 + SUM] ...
local HD, HA, FC, FT, FA, UC, UT, UA = 1, 2, 3, 4, 5, 6, 7, 8
local SUM, FP, UP, FL = 1, 2, 3, 4

-- The value of the field 'h' that a key's hash gets when it is made:
-- longer than hash-max-listpack-value (64 by default), it makes Redis keep
-- the hash as a hash table from the start. Otherwise a hash of fewer than
-- hash-max-listpack-entries fields (128 to 512) is a list that every read
-- and write searches from the front: 30,000 instructions a decision for a
-- window of a few hundred reservations, where a table takes a few hundred.
-- (A literal: a library's top level cannot reach the string library.)
local AS_TABLE = '-----------------------------------------------------------------'

local function now_us()
  local t = rcall('TIME')
  return tonum(t[1]) * 1000000 + tonum(t[2])
end

local function num(x)
  if x then return tonum(x) end
  return nil
end

-- Integers below 2^53 print exactly with %d (a C long on 64 bits).
local function int(x)
  return sfmt('%d', x)
end

-- A reservation id as a hash field.
local function idf(id)
  return spack('<d', id)
end

-- The key's clock: the server's (T, or read now), never before the latest
-- time a script of this key saw (a wall clock stepped back must not break
-- the order of the entries, which the cursors rely on).
local function now_of(tm, T)
  if not T then T = now_us() end
  if tm > T then T = tm end
  return T
end

-- The format of n packed numbers, made once per n (in a function
-- library, once per server).
local FMT = {}
local function fmt_of(n)
  local f = FMT[n]
  if not f then
    f = '<' .. srep('d', n)
    FMT[n] = f
  end
  return f
end

-- A key's shape, from the packed numbers P at pos: ng, then per group its
-- hold and number of limits k (and, with cfg, each limit's configured
-- value); the groups' names in `names`. Per limit l (1 .. nl, in the
-- shape's order): so[l], the offset of its slots in S; lg[l], its group;
-- code[l]; cfg[l]. E and C hold an entry's costs and a decision's. The
-- group with the longest hold (owner) deletes the entries. Returns the
-- shape and the next position in P.
local function shape_of(P, pos, names, cfg)
  local ng
  ng, pos = sunpack('<d', P, pos)
  local sh = {ng = ng, nl = 0, w = {}, k = {}, off = {}, first = {}, names = {},
    so = {}, lg = {}, code = {}, cfg = {}, tags = {}, E = {}, C = {},
    ns = 0, fs = false, fe = false, owner = 1, hm = false}
  local off, l, maxw = 6, 0, -1
  for i = 1, ng do
    local w, k
    w, k, pos = sunpack('<dd', P, pos)
    local name = names[i]
    sh.w[i], sh.k[i], sh.off[i], sh.first[i], sh.names[i] = w, k, off, l + 1, name
    if w > maxw then sh.owner, maxw = i, w end
    for j = 1, k do
      l = l + 1
      sh.so[l], sh.lg[l], sh.code[l], sh.tags[l] = off + 4 * j + 4, i, ssub(name, j, j), false
      sh.E[l], sh.C[l] = 0, 0
      if cfg then sh.cfg[l], pos = sunpack('<d', P, pos) end
    end
    off = off + 8 + 4 * k
  end
  sh.nl, sh.ns, sh.fs, sh.fe = l, off, fmt_of(off), fmt_of(l + 1)
  return sh, pos
end

-- Limit l's tag: its code and its group's window.
local function tag_of(sh, l)
  local t = sh.tags[l]
  if not t then
    local name = sh.names[sh.lg[l]]
    local colon = sfind(name, ':', 1, true)
    t = sh.code[l] .. ssub(name, colon)
    sh.tags[l] = t
  end
  return t
end

-- Reads entry v: returns its instant, and leaves its costs in sh.E.
local function read_entry(sh, v)
  local E, nl = sh.E, sh.nl
  if nl == 1 then
    local at, a = sunpack('<dd', v)
    E[1] = a
    return at
  elseif nl == 2 then
    local at, a, b = sunpack('<ddd', v)
    E[1], E[2] = a, b
    return at
  end
  local x = {sunpack(sh.fe, v)}
  for l = 1, nl do E[l] = x[l + 1] end
  return x[1]
end

-- An entry at t with the costs C (as given: a caller that admits maps a
-- cost of 0 to NONE first).
local function fmt_entry(sh, t, C)
  local nl = sh.nl
  if nl == 1 then return spack('<dd', t, C[1]) end
  if nl == 2 then return spack('<ddd', t, C[1], C[2]) end
  return spack(sh.fe, t, unpk(C, 1, nl))
end

-- The token an entry carries, or nil.
local function token_of(sh, v)
  if #v > 8 * (sh.nl + 1) then return ssub(v, -8) end
  return nil
end

-- A fresh state: no reservation, no cursor, every limit's learned fields
-- possibly there (fl 3, checked once).
local function fresh_state(sh)
  local S = {-1, -1, -1, -1, -1, -1}
  for i = 1, sh.ng do
    local o = sh.off[i]
    S[o + HD], S[o + HA], S[o + FC], S[o + FT] = -1, -1, 0, 0
    S[o + FA], S[o + UC], S[o + UT], S[o + UA] = -1, 0, 0, -1
    for j = 1, sh.k[i] do
      local so = o + 4 * j + 4
      S[so + SUM], S[so + FP], S[so + UP], S[so + FL] = 0, 0, 0, 3
    end
  end
  return S
end

local function set_cursors(sh, S, i)
  local o = sh.off[i]
  local c = S[o + HD] - 1
  S[o + HA] = -1
  S[o + FC], S[o + FT], S[o + FA] = c, 0, -1
  S[o + UC], S[o + UT], S[o + UA] = c, 0, -1
  for j = 1, sh.k[i] do
    local so = o + 4 * j + 4
    S[so + FP], S[so + UP] = 0, 0
  end
end

-- Counts the entries from scratch: only when the state field was lost
-- while the entries survived (or the key is new). Returns the oldest and
-- newest id, and whether the hash had any field at all.
local function recount(h, sh, S)
  local lo, hi = nil, nil
  local E, so, size = sh.E, sh.so, 8 * (sh.nl + 1)
  local all = rcall('HGETALL', h)
  for x = 1, #all, 2 do
    local f, v = all[x], all[x + 1]
    if #f == 8 and (#v == size or #v == size + 8) then
      local id = sunpack('<d', f)
      read_entry(sh, v)
      for l = 1, sh.nl do S[so[l] + SUM] = S[so[l] + SUM] + E[l] end
      if not lo or id < lo then lo = id end
      if not hi or id > hi then hi = id end
    end
  end
  return lo, hi, #all > 0
end

-- A key: its hash h, shape sh, state S at time T, next id; what this call
-- writes waits in pw (field, value, ...) and dl (fields) until save, the
-- entries written meanwhile in pend (by id), so that the call's reads see
-- them; L[l]: limit l's learned state, when it may have one.
local function key_of(h, sh, S, T, nextid)
  return {h = h, sh = sh, S = S, T = T, nextid = nextid, L = false, pend = false,
    pw = false, dl = false, fresh = false, old = 0}
end

-- Entry id: one written by this call (not saved yet), else the stored one.
local function entry(st, id)
  local p = st.pend
  if p then
    local v = p[id]
    if v then return v end
  end
  return rcall('HGET', st.h, idf(id))
end

-- Writes field f (value v) at the call's save.
local function put_field(st, f, v)
  local pw = st.pw
  if not pw then
    pw = {}
    st.pw, st.pend = pw, {}
  end
  pw[#pw + 1] = f
  pw[#pw + 1] = v
end

-- Deletes field f at the call's save.
local function del_field(st, f)
  local dl = st.dl
  if not dl then
    dl = {}
    st.dl = dl
  end
  dl[#dl + 1] = f
end

-- Entries id .. id + n - 1 (the call's own first): their values (false:
-- none) and fields, read in one command. The walks read 2, then twice as
-- many each time up to 16: a walk usually stops at its second entry, and
-- a long one (the reservations of one batch share their instant) takes a
-- command per 16.
local function entries_from(st, id, n)
  local fs = {}
  for m = 1, n do fs[m] = idf(id + m - 1) end
  local vs
  if n == 1 then
    vs = {rcall('HGET', st.h, fs[1])}
  else
    vs = rcall('HMGET', st.h, unpk(fs))
  end
  local p = st.pend
  if p then
    for m = 1, n do
      local v = p[id + m - 1]
      if v then vs[m] = v end
    end
  end
  return vs, fs
end

-- Limit l's learned state: a learned limit (with its expiry lu) and
-- usage we did not see (xc, until xu), and whether their fields exist.
local function learned_of(st, l)
  local L = st.L
  if not L then
    L = {}
    st.L = L
  end
  local x = L[l]
  if not x then
    x = {lim = st.sh.cfg[l], lu = nil, xc = nil, xu = nil, had_lim = false, had_x = false}
    L[l] = x
  end
  return x
end

-- Loads key h of shape sh at the call's time T0 (nil: read now), field v
-- being the stored state (nil: none; `HGET h s`). A state that is not of
-- this shape (a process configured otherwise wrote it) counts as lost.
-- A learned limit counts only with its expiry still ahead; the learned
-- fields are read (one HMGET per limit) only for a limit whose flags say
-- they may exist. Settles the next id: the stored one, or, when the state
-- was lost but entries survived, the one after the newest entry (the
-- incarnation goes on: its ids must not jump, or pruning would walk the
-- gap), or else T (a new incarnation: a late cancel of an expired one
-- cannot hit a new reservation).
local function load_key(h, sh, v, T0)
  local S, hi, fresh = nil, nil, false
  local ok = v and #v == 8 * sh.ns
  if ok then
    S = {sunpack(sh.fs, v)}
  else
    S = fresh_state(sh)
  end
  local T = now_of(S[TM], T0)
  local nextid = S[ID]
  if not ok then
    local lo, any
    lo, hi, any = recount(h, sh, S)
    if lo then
      for i = 1, sh.ng do
        S[sh.off[i] + HD] = lo
        set_cursors(sh, S, i)
      end
    end
    if not any then
      -- A new key: no learned field either.
      fresh = true
      for l = 1, sh.nl do S[sh.so[l] + FL] = 0 end
    end
  end
  if nextid < 0 then
    nextid = T
    if hi then nextid = hi + 1 end
  elseif hi and hi >= nextid then
    nextid = hi + 1
  end
  for i = 1, sh.ng do
    if S[sh.off[i] + HD] < 0 then
      S[sh.off[i] + HD] = nextid
      set_cursors(sh, S, i)
    end
  end
  local st = key_of(h, sh, S, T, nextid)
  if not ok then
    -- Made (or made again) now: a hash table from the start.
    st.fresh = fresh
    put_field(st, 'h', AS_TABLE)
  end
  local so = sh.so
  for l = 1, sh.nl do
    local fl = S[so[l] + FL]
    if fl > 0 and sh.cfg[l] then
      local L = learned_of(st, l)
      L.had_lim, L.had_x = fl % 2 == 1, fl >= 2
      local tg = tag_of(sh, l)
      local r = rcall('HMGET', h, 'lim:' .. tg, 'lu:' .. tg, 'xc:' .. tg, 'xu:' .. tg)
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
  return st
end

-- Drops the entries that no longer count at T in group i, oldest first
-- (each entry once in its life: amortised O(1)), a few at a time; the
-- group that holds entries longest deletes them (with their
-- token records) at the call's save. HA, the instant of the oldest entry
-- (or a lower bound: a cancelled oldest entry leaves it), spares the read
-- while that entry still counts. The cursors that fall behind the oldest
-- entry start again from it, HA telling them where the next entry is.
local function prune(st, i, T)
  local sh, S, nextid = st.sh, st.S, st.nextid
  local o, w, first, k = sh.off[i], sh.w[i], sh.first[i], sh.k[i]
  local owner = i == sh.owner
  local E = sh.E
  if not (S[o + HA] >= 0 and S[o + HA] + w > T) then
    S[o + HA] = -1
    local chunk = 2
    while S[o + HD] < nextid do
      local hd = S[o + HD]
      local n = nextid - hd
      if n > chunk then n = chunk end
      if chunk < 16 then chunk = 2 * chunk end
      local vs, fs = entries_from(st, hd, n)
      local live = false
      for m = 1, n do
        local id = hd + m - 1
        local v = vs[m]
        if v then
          local at = read_entry(sh, v)
          if at + w > T then
            S[o + HA] = at
            live = true
            break
          end
          if owner then
            del_field(st, fs[m])
            local tok = token_of(sh, v)
            if tok then del_field(st, 't' .. tok) end
          end
          for j = 1, k do
            local so, c = o + 4 * j + 4, E[first + j - 1]
            S[so + SUM] = S[so + SUM] - c
            if id <= S[o + FC] then S[so + FP] = S[so + FP] - c end
            if id <= S[o + UC] then S[so + UP] = S[so + UP] - c end
          end
        end
        S[o + HD] = id + 1
      end
      if live then break end
    end
  end
  local c = S[o + HD] - 1
  if S[o + FC] < c then
    S[o + FC], S[o + FA] = c, S[o + HA]
    for j = 1, k do S[o + 4 * j + 4 + FP] = 0 end
  end
  if S[o + UC] < c then
    S[o + UC], S[o + UA] = c, S[o + HA]
    for j = 1, k do S[o + 4 * j + 4 + UP] = 0 end
  end
end

-- Moves a cursor of group i (slots ci: ids up to it, each with at <=
-- S[ti], their costs in each limit's slot pi; ai: the instant of the entry
-- after it, or a lower bound, -1: unknown) to theta: forward over the
-- entries with at <= theta (it stops at the first later one: exact, the
-- entries being in order; a known later instant spares the read), or,
-- when theta went back, backward over the entries past it.
local function advance(st, i, ci, ti, ai, pi, theta)
  local sh, S, nextid = st.sh, st.S, st.nextid
  local o, first, k, E = sh.off[i], sh.first[i], sh.k[i], sh.E
  local c, a = S[o + ci], S[o + ai]
  if c < S[o + HD] - 1 then
    c, a = S[o + HD] - 1, -1
    for j = 1, k do S[o + 4 * j + 4 + pi] = 0 end
  end
  if theta >= S[o + ti] then
    if not (a >= 0 and a > theta) then
      a = -1
      local chunk, stop = 2, false
      while not stop and c + 1 < nextid do
        local n = nextid - c - 1
        if n > chunk then n = chunk end
        if chunk < 16 then chunk = 2 * chunk end
        local vs = entries_from(st, c + 1, n)
        for m = 1, n do
          local v = vs[m]
          if v then
            local at = read_entry(sh, v)
            if at > theta then
              a, stop = at, true
              break
            end
            for j = 1, k do
              local x = o + 4 * j + 4 + pi
              S[x] = S[x] + E[first + j - 1]
            end
          end
          c = c + 1
        end
      end
    end
  else
    a = -1
    while c >= S[o + HD] do
      local v = entry(st, c)
      if v then
        local at = read_entry(sh, v)
        if at <= theta then break end
        for j = 1, k do
          local x = o + 4 * j + 4 + pi
          S[x] = S[x] - E[first + j - 1]
        end
        a = at
      end
      c = c - 1
    end
  end
  S[o + ci], S[o + ai], S[o + ti] = c, a, theta
end

-- The free cursor of group i at base: every entry it covers no longer
-- counts at base.
local function free_at(st, i, base)
  advance(st, i, FC, FT, FA, FP, base - st.sh.w[i])
end

-- The used cursor of group i at T.
local function used_at(st, i, T)
  advance(st, i, UC, UT, UA, UP, T)
end

-- A new entry (id, at t, costs C) joins group i: the running sums, and
-- the caches of the oldest entry and of the cursors that end just before
-- it (the used cursor takes it in at once when it has started by T).
local function add_entry(st, i, id, t, C)
  local sh, S = st.sh, st.S
  local o, first = sh.off[i], sh.first[i]
  local used = S[o + UC] == id - 1 and t <= S[o + UT]
  for j = 1, sh.k[i] do
    local so, c = o + 4 * j + 4, C[first + j - 1]
    S[so + SUM] = S[so + SUM] + c
    if used then S[so + UP] = S[so + UP] + c end
  end
  if S[o + HD] == id and S[o + HA] < 0 then S[o + HA] = t end
  if S[o + FC] == id - 1 and S[o + FA] < 0 then S[o + FA] = t end
  if used then
    S[o + UC] = id
  elseif S[o + UC] == id - 1 and S[o + UA] < 0 then
    S[o + UA] = t
  end
end

-- The earliest t >= base at which the entries leave room for cost within
-- budget in limit l (nil when cost > budget), base being at or after the
-- free cursor's base. O(1) when it fits by the running sum; else it reads
-- the entries past the cursor, oldest first, only until enough of them
-- have stopped counting.
local function earliest_with(st, l, base, cost, budget)
  if cost > budget then return nil end
  local sh, S, nextid = st.sh, st.S, st.nextid
  local i = sh.lg[l]
  local o, w, E = sh.off[i], sh.w[i], sh.E
  local so = sh.so[l]
  local allowed = budget - cost
  local rest = S[so + SUM] - S[so + FP]
  local t = base
  local id = S[o + FC]
  local chunk = 2
  while rest > allowed and id + 1 < nextid do
    local n = nextid - id - 1
    if n > chunk then n = chunk end
    if chunk < 16 then chunk = 2 * chunk end
    local vs = entries_from(st, id + 1, n)
    for m = 1, n do
      id = id + 1
      local v = vs[m]
      if v then
        local at = read_entry(sh, v)
        rest = rest - E[l]
        local free = at + w
        if free > t then t = free end
        if rest <= allowed then break end
      end
    end
  end
  return t
end

-- The earliest t >= base that fits cost under limit lim, with the
-- external usage (L) counted until it expires.
local function earliest_under(st, l, L, base, cost, lim)
  local plain = earliest_with(st, l, base, cost, lim)
  if not plain then return nil end
  if L.xu and plain < L.xu then
    local b = lim - L.xc
    if b < 0 then b = 0 end
    local t = earliest_with(st, l, base, cost, b)
    if t and t < L.xu then return t end
    return L.xu
  end
  return plain
end

-- The earliest t >= base that fits cost in limit l; nil only when it
-- exceeds the configured limit (a learned limit expires, so it never
-- makes a request "never fit"). The learned limit holds before its expiry
-- lu, the configured one from then on.
local function earliest_dim(st, l, base, cost)
  local cfg = st.sh.cfg[l]
  local L = st.L and st.L[l]
  if cost > cfg then return nil end
  if not L then return earliest_with(st, l, base, cost, cfg) end
  if not L.lu then return earliest_under(st, l, L, base, cost, L.lim) end
  local t = earliest_under(st, l, L, base, cost, L.lim)
  if t and t < L.lu then return t end
  local b = base
  if L.lu > b then b = L.lu end
  return earliest_under(st, l, L, b, cost, cfg)
end

-- Sets a key's expiry to at least ttl milliseconds (never shortens it:
-- another process may have configured a longer window).
local function extend(k, ttl)
  local cur = rcall('PTTL', k)
  if cur == -2 then return end
  if cur < ttl then rcall('PEXPIRE', k, ttl) end
end

-- Appends limit l's learned fields to an HSET argument list, and the ones
-- to delete to an HDEL list; sets its flags. Returns the latest instant
-- they count until (0: none).
local function learned_fields(st, l, L, set, del)
  local sh = st.sh
  local cfg = sh.cfg[l]
  local tg = tag_of(sh, l)
  local until_ = 0
  local learned = L.lu and L.lim ~= cfg
  st.S[sh.so[l] + FL] = (learned and 1 or 0) + (L.xu and 2 or 0)
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

-- Writes key st back: the state, the pending entries and the learned
-- fields in one HSET, the deletions in one HDEL (when there are any), and
-- keeps every key alive as long as something in it still counts, plus
-- one second. The expiry is pushed in steps (S[EX]: the time every key
-- lives at least until; each step reaches up to 250 ms beyond the need),
-- so that most calls touch no expiry at all. st.fresh: the keys this call
-- may have created (their expiry is set at once).
local function save(st)
  local sh, S, T, h = st.sh, st.S, st.T, st.h
  S[ID], S[TM] = st.nextid, T
  local set = st.pw or {}
  local del = st.dl or {}
  local horizon = T
  local L = st.L
  if L then
    for l = 1, sh.nl do
      if L[l] then
        local u = learned_fields(st, l, L[l], set, del)
        if u > horizon then horizon = u end
      end
    end
  end
  if S[GATE] > horizon then horizon = S[GATE] end
  if S[LAST] > horizon then horizon = S[LAST] end
  if S[TB] > horizon then horizon = S[TB] end
  local maxw = sh.w[sh.owner] or 0
  local need = horizon + maxw + 1000000
  local stepped = need > S[EX]
  if stepped then
    local slack = floor(maxw / 2)
    if slack > 250000 then slack = 250000 end
    S[EX] = need + slack
  end
  set[#set + 1] = 's'
  set[#set + 1] = spack(sh.fs, unpk(S, 1, sh.ns))
  rcall('HSET', h, unpk(set))
  if #del > 0 then rcall('HDEL', h, unpk(del)) end
  st.pw, st.pend, st.dl = false, false, false
  if stepped or st.fresh then
    local ttl = ceil((S[EX] - T) / 1000)
    extend(h, ttl)
    extend(h .. ':q', ttl)
  end
end

-- Takes reservation id out of key h (its costs out of the running sums
-- and the cursors of the groups that still count it, its entry and its
-- token record deleted) and, when it was booked ahead, out of the FIFO
-- queue, moving the tail back to the newest reservation left ahead of
-- now. Returns 1 when the reservation was found.
local function cancel_id(h, sh, id)
  local f = idf(id)
  local r = rcall('HMGET', h, 's', f)
  local v, e = r[1], r[2]
  if not e then return 0 end
  local tok = token_of(sh, e)
  if tok then
    rcall('HDEL', h, f, 't' .. tok)
  else
    rcall('HDEL', h, f)
  end
  if not (v and #v == 8 * sh.ns) then return 1 end
  local S = {sunpack(sh.fs, v)}
  read_entry(sh, e)
  local E = sh.E
  for i = 1, sh.ng do
    local o, first = sh.off[i], sh.first[i]
    if id >= S[o + HD] then
      for j = 1, sh.k[i] do
        local so, c = o + 4 * j + 4, E[first + j - 1]
        S[so + SUM] = S[so + SUM] - c
        if id <= S[o + FC] then S[so + FP] = S[so + FP] - c end
        if id <= S[o + UC] then S[so + UP] = S[so + UP] - c end
      end
    end
  end
  local q = h .. ':q'
  if rcall('ZREM', q, int(id)) == 1 then
    -- Booked ahead: the tail is the newest reservation left ahead of now.
    rcall('ZREMRANGEBYSCORE', q, '-inf', int(now_of(S[TM])))
    local top = rcall('ZREVRANGE', q, 0, 0, 'WITHSCORES')
    S[LAST] = -1
    if top[2] then S[LAST] = tonum(top[2]) end
  end
  rcall('HSET', h, 's', spack(sh.fs, unpk(S, 1, sh.ns)))
  return 1
end
