-- acquire: a batch of decisions, in order, as if each were its own call
-- at the batch's server time. KEYS = the hashes of the batch's limiter
-- keys (each once). ARGV[1] = the numbers, packed as little-endian doubles
-- (a text number costs Redis a strtod each): the number of decisions n
-- and of shapes, then per decision its key (index in KEYS), its shape
-- (index among the shapes), its deadline (us after now, -1: none) and its
-- cost in each limit of the shape. ARGV[2] = the decisions' tokens, 8
-- bytes each. ARGV[3 ..] = per shape (the limits of a key): its groups'
-- names joined by ',', a zero byte, then its numbers (its number of
-- groups, then per group its hold, the window plus the arrival margin in
-- us, and number of limits k, then each of its limits' configured value).
-- Returns {T, then per decision: code, x, y, at, now, old, used...}:
-- {0, id, wait, at, now, old} | {1, wait, 0, at, now, old} |
-- {2, cost, capacity, 0, now, old} | {3, 0, 0, 0, now, 0} (cancelled by
-- its token before it ran: its caller is gone; nothing reserved), each
-- followed by one number per limit of its shape: with 0, what the limit
-- held as of the admission (this reservation and every one booked ahead
-- of it that still counts then), else 0. `old` is 1 when the decision
-- created the key's state while a process of an older version holds
-- state for the same key: the two keep separate counts, so the caller
-- warns.
--
-- A key is read at its first decision in the batch and written once at
-- the end (the batch's own reads see its new entries). The common case
-- (nothing to prune, the cursors at the newest entry, room by the running
-- sums, nothing learned) is decided inline; every other case by the
-- general helpers, with the same result.

-- The answer so far, and its length.
local out, on

local function answer(a, b, c, d, e, f)
  out[on + 1], out[on + 2], out[on + 3], out[on + 4], out[on + 5], out[on + 6] = a, b, c, d, e, f
  on = on + 6
end

local function zeros(n)
  for _ = 1, n do
    on = on + 1
    out[on] = 0
  end
end

-- The shapes seen, by their argument (in a function library they outlive
-- the call: a shape is parsed once per server, not once per call); at
-- most 64, then the cache starts again.
local SHAPES, NSHAPES = {}, 0

-- The shape of an argument: its groups' names joined by ',', a zero byte,
-- then its packed numbers (see shape_of). A shape is read-only once made
-- (but for its scratch arrays E and C, and its tags, made on first use).
local function acquire_shape(s)
  local sh = SHAPES[s]
  if sh then return sh end
  local z = sfind(s, '\0', 1, true)
  local names, i = {}, 1
  while i < z do
    local c = sfind(s, ',', i, true)
    if not c or c > z then c = z end
    names[#names + 1] = ssub(s, i, c - 1)
    i = c + 1
  end
  sh = shape_of(s, z + 1, names, true)
  if NSHAPES >= 64 then
    SHAPES, NSHAPES = {}, 0
  end
  SHAPES[s], NSHAPES = sh, NSHAPES + 1
  return sh
end

-- Loads key h of shape sh at the batch's time T0.
local function open(h, sh, T0)
  local st = load_key(h, sh, rcall('HGET', h, 's'), T0)
  if st.S[ID] >= 0 then return st end
  -- A new state: a process of layout 1, 2 or 3 may hold the key's
  -- (:s, :s2, :3:s, under the same hash tag).
  local close = sfind(h, '}', 1, true)
  local tag = ssub(h, 1, close)
  if rcall('EXISTS', tag .. ':s', tag .. ':s2', tag .. ':3:s') > 0 then st.old = 1 end
  return st
end

-- One decision on key st, its costs in st.sh.C.
local function decide(st, tok, deadline)
  local sh, S, T = st.sh, st.S, st.T
  local ng, nl, C, cfg, off, w, so = sh.ng, sh.nl, sh.C, sh.cfg, sh.off, sh.w, sh.so
  local old = st.old
  st.old = 0
  -- A tombstone exists only after a cancel by token: the flag spares
  -- every other acquire the lookup.
  if S[TB] > T and rcall('EXISTS', st.h .. ':k:' .. tok) == 1 then
    answer(3, 0, 0, 0, T, 0)
    zeros(nl)
    return
  end
  local nextid = st.nextid
  for i = 1, ng do
    local o = off[i]
    -- Nothing to prune while the oldest entry still counts.
    if not (S[o + HA] >= 0 and S[o + HA] + w[i] > T) then prune(st, i, T) end
    -- The used cursor follows every call (amortised O(1)), so that a
    -- learn never walks the entries admitted since the previous one; at
    -- the newest entry already, it only moves to T.
    if S[o + UC] == nextid - 1 and T >= S[o + UT] then
      if not (S[o + UA] >= 0 and S[o + UA] > T) then S[o + UA] = -1 end
      S[o + UT] = T
    else
      used_at(st, i, T)
    end
  end
  if S[GATE] <= T then S[GATE] = -1 end
  if S[LAST] <= T then S[LAST] = -1 end
  local t = T
  if S[GATE] > t then t = S[GATE] end
  if S[LAST] > t then t = S[LAST] end
  local base = t
  local code, x, y = nil, 0, 0
  local L = st.L
  for i = 1, ng do
    local o = off[i]
    -- The free cursor at base; with the entry after it known to count
    -- then, only its instant moves.
    local theta = base - w[i]
    if theta >= S[o + FT] and S[o + FA] >= 0 and S[o + FA] > theta then
      S[o + FT] = theta
    else
      free_at(st, i, base)
    end
    local first = sh.first[i]
    for l = first, first + sh.k[i] - 1 do
      local cost = C[l]
      if cost > 0 then
        local cf = cfg[l]
        local at = nil
        if cost <= cf then
          if L and L[l] then
            at = earliest_dim(st, l, base, cost)
          elseif S[so[l] + SUM] - S[so[l] + FP] <= cf - cost then
            at = base
          else
            at = earliest_with(st, l, base, cost, cf)
          end
        end
        if not at then
          code, x, y, t = 2, cost, cf, 0
          break
        end
        if at > t then t = at end
      end
    end
    if code then break end
  end
  if not code and deadline >= 0 and t > T + deadline then
    code, x = 1, t - T
  end
  if code then
    answer(code, x, y, t, T, old)
    zeros(nl)
    return
  end
  local id = nextid
  answer(0, id, t - T, t, T, old)
  -- What each limit holds as of t with this reservation: the running sum
  -- less what the free cursor at t covers (the entries that left by t).
  if t > base then
    for i = 1, ng do free_at(st, i, t) end
  end
  local any = false
  for l = 1, nl do
    local c = C[l]
    on = on + 1
    out[on] = S[so[l] + SUM] - S[so[l] + FP] + c
    if c > 0 then any = true end
  end
  st.nextid = nextid + 1
  -- A reservation with no cost in any limit has nothing to count or give
  -- back: no entry.
  if any then
    local f = idf(id)
    -- The token record: a cancel by token finds the reservation as long
    -- as it counts; the entry carries the token, so that the record goes
    -- with it.
    put_field(st, 't' .. tok, f)
    for l = 1, nl do
      if C[l] == 0 then C[l] = NONE end
    end
    local v = fmt_entry(sh, t, C) .. tok
    put_field(st, f, v)
    st.pend[id] = v
    for i = 1, ng do add_entry(st, i, id, t, C) end
  end
  if t > T then
    -- Booked ahead: remembered in the queue for the tail after a cancel;
    -- the members left behind by time go as new ones come.
    local q = st.h .. ':q'
    rcall('ZREMRANGEBYSCORE', q, '-inf', int(T))
    rcall('ZADD', q, int(t), int(id))
    st.fresh = true
    S[LAST] = t
  end
end

local function acquire(KEYS, ARGV)
  init()
  local P = ARGV[1]
  local toks = ARGV[2]
  local n, nsh, pos = sunpack('<dd', P)
  local shapes = {}
  for si = 1, nsh do shapes[si] = acquire_shape(ARGV[2 + si]) end
  local T0 = now_us()
  local keys = {}
  out, on = {T0}, 1
  for i = 1, n do
    local ki, si, deadline
    ki, si, deadline, pos = sunpack('<ddd', P, pos)
    local sh = shapes[si]
    local st = keys[ki]
    if st and st.sh ~= sh then
      save(st)
      st = nil
    end
    if not st then
      st = open(KEYS[ki], sh, T0)
      keys[ki] = st
    end
    local C, nl = sh.C, sh.nl
    if nl == 1 then
      C[1], pos = sunpack('<d', P, pos)
    elseif nl == 2 then
      C[1], C[2], pos = sunpack('<dd', P, pos)
    else
      local c = {sunpack(fmt_of(nl), P, pos)}
      for l = 1, nl do C[l] = c[l] end
      pos = c[nl + 1]
    end
    decide(st, ssub(toks, 8 * i - 7, 8 * i), deadline)
  end
  for _, st in prs(keys) do save(st) end
  local r = out
  out = nil
  return r
end
