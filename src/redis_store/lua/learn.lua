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
  local groups, names, o = groups_of(KEYS, ARGV, 1, 1, 2)
  local g = groups[1]
  local j = tonumber(ARGV[o])
  local cfg = tonumber(ARGV[o + 1])
  g.d[4 * j - 4 + CFG] = cfg
  local limit = tonumber(ARGV[o + 2])
  local remaining = tonumber(ARGV[o + 3])
  local reset = tonumber(ARGV[o + 4])
  local learn_limits = ARGV[o + 5] == '1'
  local ttl = tonumber(ARGV[o + 6])
  local st = redis.call('HMGET', h, unpack(names))
  local K = unpack_k(st[1])
  local sid = K[ID]
  local T = now_of(K[TM])
  local nextid = load_groups(h, groups, T, sid, st)
  prune_group(g, T, nextid)
  local L = learned_of(g, j)
  local changed = false
  local dirty = false
  if limit > 0 then
    local new = limit
    local floor = math.floor(cfg / 10)
    if floor < 1 then floor = 1 end
    local ceiling = cfg
    if learn_limits then ceiling = cfg * 100 end
    if new < floor then new = floor end
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
  if remaining >= 0 then
    used_at(g, T, nextid)
    local used = g.s[4 * j + 4 + UP]
    if L.xu and L.xu > T then used = used + L.xc end
    local ours = L.lim - used
    if ours < 0 then ours = 0 end
    if remaining < ours then
      local r = g.w
      if reset >= 0 and reset < r then r = reset end
      local u = T + r
      L.xc = (L.xc or 0) + (ours - remaining)
      if not L.xu or L.xu < u then L.xu = u end
      changed = true
    end
  end
  -- A key with no state yet gets one only for what was learned; one with
  -- state keeps its pruning and cursors (so that the next call does not
  -- redo their walk).
  if changed or dirty or sid >= 0 then
    K[ID], K[TM] = nextid, T
    save(h, KEYS[2], groups, T, K, nil)
  end
  if changed then return L.lim end
  return -1
end
