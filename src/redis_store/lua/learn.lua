-- learn: KEYS = the key's hash. ARGV[1] = packed numbers: the learned
-- limit's index l in the shape, its configured value, then what the
-- provider said: limit, remaining, reset (us; each -1: unknown),
-- learn_limits (0|1), learned_ttl (us), the arrival margin of the limit's
-- window (us), the reservation whose response said it (its id and what
-- the limit held as of its admission; -1: none, compared as of now), then
-- ng, and per group its hold (us) and number of limits k. ARGV[2 ..] =
-- the groups' names. Returns the limit in force when it or the external
-- usage changed, else -1.
--
-- The rule is the in-memory SlidingWindow's (see its `learn`):
--
-- A learned limit: 0 is ignored; it never goes below
-- max(1, floor(configured / 10)) nor above the configured one (with
-- learn_limits: configured * 100); it holds until learned_ttl after the
-- provider last said it (lu:<tag>), a repeated header refreshing it.
--
-- `remaining`, with a reservation, is compared with what the limit held
-- as of the reservation's admission (the provider computed it when the
-- request arrived): the difference is external usage, which replaces
-- what an earlier admission taught and counts until the reset measured
-- from the admission (its entry's instant, on this clock), at most one
-- window, plus the arrival margin. A reservation older than the newest
-- one compared (xh:<tag>) is stale; one admitted longer ago than the
-- reset, or whose entry is gone, teaches nothing.
--
-- Without a reservation, `remaining` is compared with the usage as of
-- now: the "used" cursor's sum (the entries started by now, still in the
-- window), which moves forward over the entries started since the last
-- call (amortised O(1)), never over the whole window; a lower one adds
-- the difference, until now plus the reset.
local function learn(KEYS, ARGV)
  init()
  local h = KEYS[1]
  local P = ARGV[1]
  local l, cfg, limit, remaining, reset, learn_limits, ttl, margin, rid, rused, pos =
    sunpack('<dddddddddd', P)
  local sh = shape_of(P, pos, {unpk(ARGV, 2)}, false)
  sh.cfg[l] = cfg
  local tg = tag_of(sh, l)
  local r = rcall('HMGET', h, 's', 'xh:' .. tg)
  local st = load_key(h, sh, r[1], nil)
  local existed = st.S[ID] >= 0
  local T = st.T
  -- Every group, so that the group that deletes entries never runs ahead
  -- of the others.
  for i = 1, sh.ng do prune(st, i, T) end
  local L = learned_of(st, l)
  local changed = false
  local dirty = false
  if limit > 0 then
    local new = limit
    local floor_ = floor(cfg / 10)
    if floor_ < 1 then floor_ = 1 end
    local ceiling = cfg
    if learn_limits == 1 then ceiling = cfg * 100 end
    if new < floor_ then new = floor_ end
    -- The ceiling wins over the floor (a configured 0 stays 0).
    if new > ceiling then new = ceiling end
    if new == cfg or ttl <= 0 then
      new = cfg
      L.lu = nil
    else
      L.lu = T + ttl
    end
    if new ~= L.lim then
      L.lim = new
      changed = true
    end
    dirty = true
  end
  local window = sh.w[sh.lg[l]] - margin
  local r_ = window
  if reset >= 0 and reset < r_ then r_ = reset end
  if remaining >= 0 and rid >= 0 then
    -- As of the admission. A limit with no snapshot (rused -1) is not
    -- compared.
    local e = rused >= 0 and entry(st, rid)
    if e then
      local until_ = sunpack('<d', e) + r_ + margin
      if until_ > T and rid >= (num(r[2]) or 0) then
        put_field(st, 'xh:' .. tg, int(rid))
        dirty = true
        local ours = L.lim - rused
        if ours < 0 then ours = 0 end
        local xc, xu = nil, nil
        if remaining < ours then xc, xu = ours - remaining, until_ end
        if xc ~= L.xc or xu ~= L.xu then changed = true end
        L.xc, L.xu = xc, xu
      end
    end
  elseif remaining >= 0 then
    used_at(st, sh.lg[l], T)
    local used = st.S[sh.so[l] + UP]
    if L.xu and L.xu > T then used = used + L.xc end
    local ours = L.lim - used
    if ours < 0 then ours = 0 end
    if remaining < ours then
      local u = T + r_
      L.xc = (L.xc or 0) + (ours - remaining)
      if not L.xu or L.xu < u then L.xu = u end
      changed = true
    end
  end
  -- A key with no state yet gets one only for what was learned; one with
  -- state keeps its pruning and cursors (so that the next call does not
  -- redo their walk).
  if changed or dirty or existed then save(st) end
  if changed then return L.lim end
  return -1
end
