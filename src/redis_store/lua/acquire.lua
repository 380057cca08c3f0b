-- acquire: ARGV = deadline (us after now, -1: none), n, then n times
-- (tag, window us, configured limit, cost), then the token record's
-- longest life (ms). KEYS = hash, queue, n entries hashes, the caller's
-- token key, the layout-1 hash of the same key (read only, see below).
-- Returns {0, id, wait, at, now, old} | {1, wait, 0, at, now, old} |
-- {2, cost, capacity, 0, now, old} | {3, 0, 0, 0, now, 0} (cancelled by
-- its token before it ran: its caller is gone; nothing reserved). `old` is
-- 1 when this call created the key's state while a process of the
-- layout-1 version (list logs) holds state for the same key: the two keep
-- separate counts, so the caller warns.
local h = KEYS[1]
local q = KEYS[2]
local deadline = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local tk = KEYS[3 + n]
local dims = {}
-- Everything the call needs from the state hash, in one HMGET.
local names = {'k'}
for i = 1, n do
  local o = 2 + (i - 1) * 4
  dims[i] = {
    tag = ARGV[o + 1],
    window = tonumber(ARGV[o + 2]),
    configured = tonumber(ARGV[o + 3]),
    cost = tonumber(ARGV[o + 4]),
    e = KEYS[2 + i],
  }
  names[i + 1] = 'c:' .. dims[i].tag
end
local st = redis.call('HMGET', h, unpack(names))
local sid, tm, gate, last, ex = unpack_k(st[1])
local T = now_of(tm)
if redis.call('EXISTS', tk) == 1 then return {3, 0, 0, 0, T, 0} end
local token_ms = tonumber(ARGV[3 + 4 * n])
local old = 0
if not sid and redis.call('EXISTS', KEYS[4 + n]) == 1 then old = 1 end
local nextid = load_dims(h, dims, T, sid, st, 1)
for _, d in ipairs(dims) do
  prune_dim(d, T, nextid)
  -- The used cursor follows every call (amortised O(1)), so that a learn
  -- never walks the entries admitted since the previous one.
  used_at(d, T, nextid)
end
if gate and gate <= T then gate = nil end
if last and last <= T then last = nil end
local t = T
if gate and gate > t then t = gate end
if last and last > t then t = last end
local base = t
local result = nil
for _, d in ipairs(dims) do
  free_at(d, base, nextid)
  if d.cost > 0 then
    local at = earliest_dim(d, base, d.cost, nextid)
    if not at then
      result = {2, d.cost, d.configured, 0, T, old}
      break
    end
    if at > t then t = at end
  end
end
if not result and deadline >= 0 and t > T + deadline then
  result = {1, t - T, 0, t, T, old}
end
local fresh = {}
if not result then
  local id = nextid
  nextid = nextid + 1
  for _, d in ipairs(dims) do
    if d.cost > 0 then
      if d.sum == 0 then fresh[#fresh + 1] = d.e end
      redis.call('HSET', d.e, int(id), fmt(t, d.cost))
      add_entry(d, id, t, T)
    end
  end
  if t > T then
    -- Booked ahead: remembered in the queue for the tail after a cancel;
    -- the members left behind by time go as new ones come.
    redis.call('ZREMRANGEBYSCORE', q, '-inf', int(T))
    redis.call('ZADD', q, int(t), int(id))
    fresh[#fresh + 1] = q
    last = t
  end
  -- The token record lives as long as the reservation counts (at most
  -- token_ms): a cancel by token finds the id.
  local maxw = 0
  for _, d in ipairs(dims) do
    if d.window > maxw then maxw = d.window end
  end
  local ttl = math.ceil((t - T + maxw) / 1000) + 1000
  if ttl > token_ms then ttl = token_ms end
  redis.call('SET', tk, int(id), 'PX', ttl)
  result = {0, id, t - T, t, T, old}
end
save(h, q, dims, T, T, {id = nextid, tm = T, gate = gate, last = last, ex = ex}, fresh, {})
return result
