-- learn: ARGV = the group (state field, window us, k, then the tag of
-- each of its limits), then the learned limit's index in the group, its
-- configured limit, limit, remaining, reset us (each -1: unknown),
-- learn_limits (0|1), learned_ttl us. KEYS = hash, queue, the group's
-- entries hash. Returns the limit in force when it or the external usage
-- changed, else -1.
--
-- A learned limit (mirrors the in-memory SlidingWindow): 0 is ignored; it never
-- goes below max(1, floor(configured / 10)) nor above the configured one
-- (with learn_limits: configured * 100); it holds until learned_ttl after
-- the provider last said it (lu:<tag>), a repeated header refreshing it.
--
-- The usage as of now (what `remaining` is compared with) is the "used"
-- cursor's sum: the entries started by now, still in the window. The
-- cursor moves forward over the entries started since the last call
-- (amortised O(1)), never over the whole window.
local function learn(KEYS, ARGV)
  local h = KEYS[1]
  local groups, names, o = groups_of(KEYS, ARGV, 1, 1, 2, false)
  local g = groups[1]
  local d = g.dims[tonumber(ARGV[o])]
  d.configured = tonumber(ARGV[o + 1])
  d.lim = d.configured
  local limit = tonumber(ARGV[o + 2])
  local remaining = tonumber(ARGV[o + 3])
  local reset = tonumber(ARGV[o + 4])
  local learn_limits = ARGV[o + 5] == '1'
  local ttl = tonumber(ARGV[o + 6])
  local st = redis.call('HMGET', h, unpack(names))
  local kw = unpack_k(st[1])
  local sid = kw.id
  local T = now_of(kw.tm)
  local nextid = load_groups(h, groups, T, sid, st)
  prune_group(g, T, nextid)
  local changed = false
  local dirty = false
  if limit > 0 then
    local new = limit
    local floor = math.floor(d.configured / 10)
    if floor < 1 then floor = 1 end
    local ceiling = d.configured
    if learn_limits then ceiling = d.configured * 100 end
    if new < floor then new = floor end
    -- The ceiling wins over the floor (a configured 0 stays 0).
    if new > ceiling then new = ceiling end
    if new == d.configured or ttl <= 0 then
      new = d.configured
      d.lu = nil
    else
      d.lu = T + ttl
    end
    if new ~= d.lim then
      d.lim = new
      changed = true
    end
    dirty = true
  end
  if remaining >= 0 then
    used_at(g, T, nextid)
    local used = d.up
    if d.xu and d.xu > T then used = used + d.xc end
    local ours = d.lim - used
    if ours < 0 then ours = 0 end
    if remaining < ours then
      local r = g.window
      if reset >= 0 and reset < r then r = reset end
      local u = T + r
      d.xc = (d.xc or 0) + (ours - remaining)
      if not d.xu or d.xu < u then d.xu = u end
      changed = true
    end
  end
  -- A key with no state yet gets one only for what was learned; one with
  -- state keeps its pruning and cursors (so that the next call does not
  -- redo their walk).
  if changed or dirty or sid then
    kw.id, kw.tm = nextid, T
    save(h, KEYS[2], groups, T, kw, {})
  end
  if changed then return d.lim end
  return -1
end
