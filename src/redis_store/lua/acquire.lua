-- acquire: ARGV = the numbers, packed as little-endian doubles (a text
-- number costs Redis a strtod each): deadline (us after now, -1: none),
-- the number of groups ng, the longest life of a token record (ms), then
-- per group its window (us) and number of limits k, and per limit its
-- configured limit and cost; then the caller's token (8 bytes), then per
-- group its state field and the tag of each of its limits. KEYS = hash,
-- queue, ng entries hashes, the two token generations, the caller's
-- tombstone key, the state hashes of layouts 1 and 2 of the same key
-- (read only, see below).
-- Returns {0, id, wait, at, now, old} | {1, wait, 0, at, now, old} |
-- {2, cost, capacity, 0, now, old} | {3, 0, 0, 0, now, 0} (cancelled by
-- its token before it ran: its caller is gone; nothing reserved). `old` is
-- 1 when this call created the key's state while a process of an older
-- version holds state for the same key: the two keep separate counts, so
-- the caller warns.
local function acquire(KEYS, ARGV)
  local h = KEYS[1]
  local q = KEYS[2]
  local N = {struct.unpack(fmt_of(#ARGV[1] / 8), ARGV[1])}
  local deadline, ng, token_us = N[1], N[2], N[3] * 1000
  local tok = ARGV[2]
  local groups, names = groups_packed(KEYS, ARGV, N, ng, 4, 3)
  -- Everything the call needs from the state hash, in one HMGET.
  local st = redis.call('HMGET', h, unpack(names))
  local K = unpack_k(st[1])
  local T = now_of(K[TM])
  -- A tombstone exists only after a cancel by token that found no record:
  -- the flag spares every other acquire the lookup.
  if K[TB] > T and redis.call('EXISTS', KEYS[5 + ng]) == 1 then
    return {3, 0, 0, 0, T, 0}
  end
  local old = 0
  if K[ID] < 0 and redis.call('EXISTS', KEYS[6 + ng], KEYS[7 + ng]) > 0 then old = 1 end
  local nextid = load_groups(h, groups, T, K[ID], st)
  for _, g in ipairs(groups) do
    prune_group(g, T, nextid)
    -- The used cursor follows every call (amortised O(1)), so that a learn
    -- never walks the entries admitted since the previous one.
    used_at(g, T, nextid)
  end
  if K[GATE] <= T then K[GATE] = -1 end
  if K[LAST] <= T then K[LAST] = -1 end
  local t = T
  if K[GATE] > t then t = K[GATE] end
  if K[LAST] > t then t = K[LAST] end
  local base = t
  local result = nil
  local maxw = 0
  for _, g in ipairs(groups) do
    if g.w > maxw then maxw = g.w end
    free_at(g, base, nextid)
    for j = 1, g.k do
      if g.d[4 * j - 4 + COST] > 0 then
        local at = earliest_dim(g, j, base, nextid)
        if not at then
          result = {2, g.d[4 * j - 4 + COST], g.d[4 * j - 4 + CFG], 0, T, old}
          break
        end
        if at > t then t = at end
      end
    end
    if result then break end
  end
  if not result and deadline >= 0 and t > T + deadline then
    result = {1, t - T, 0, t, T, old}
  end
  local fresh = nil
  if not result then
    local id = nextid
    nextid = nextid + 1
    local f = idf(id)
    local wrote = false
    for _, g in ipairs(groups) do
      local any = false
      for j = 1, g.k do
        if g.d[4 * j - 4 + COST] > 0 then any = true end
      end
      if any then
        -- No id left in the group: its entries hash is gone, this creates it.
        if g.s[HD] >= id then
          fresh = fresh or {}
          fresh[#fresh + 1] = g.e
        end
        redis.call('HSET', g.e, f, fmt_entry(g, t))
        add_entry(g, id, t)
        wrote = true
      end
    end
    if t > T then
      -- Booked ahead: remembered in the queue for the tail after a cancel;
      -- the members left behind by time go as new ones come.
      redis.call('ZREMRANGEBYSCORE', q, '-inf', int(T))
      redis.call('ZADD', q, int(t), int(id))
      fresh = fresh or {}
      fresh[#fresh + 1] = q
      K[LAST] = t
    end
    -- The token record: found by a cancel by token as long as the
    -- reservation counts, at most token_us. Generations of length L (the
    -- longest window, at most token_us) each live 2 L, so a token written
    -- into the current one lives at least L; the generation before the
    -- last one is dropped whole when a new one starts (UNLINK: freed off
    -- the main thread). A reservation booked so far ahead that it must
    -- outlive L gets a key of its own. A reservation with no entry (no
    -- cost in any limit) has nothing to give back: no record.
    local L = maxw
    if L > token_us then L = token_us end
    local life = t - T + maxw
    if life > token_us then life = token_us end
    if wrote and life <= L then
      local p = K[TP]
      if K[TG] < 0 or T - K[TG] >= L then
        if K[TG] >= 0 then
          p = 1 - p
          redis.call('UNLINK', KEYS[3 + ng + p])
        end
        K[TG], K[TP] = T, p
        redis.call('HSET', KEYS[3 + ng + p], tok, f)
        redis.call('PEXPIRE', KEYS[3 + ng + p], math.ceil(2 * L / 1000) + 1000)
      else
        redis.call('HSET', KEYS[3 + ng + p], tok, f)
      end
    elseif wrote then
      redis.call('SET', KEYS[5 + ng], f, 'PX', math.ceil(life / 1000) + 1000)
    end
    result = {0, id, t - T, t, T, old}
  end
  K[ID], K[TM] = nextid, T
  save(h, q, groups, T, K, fresh)
  return result
end
