-- acquire: ARGV = deadline (us after now, -1: none), n, then n times
-- (tag, window us, configured limit, cost), then the token record's
-- longest life (ms). KEYS = hash, n logs, the caller's token key.
-- Returns {0, id, wait, at, now} | {1, wait, 0, at, now} |
-- {2, cost, capacity, 0, now} | {3, 0, 0, 0, now} (cancelled by its token
-- before it ran: its caller is gone; nothing reserved).
local h = KEYS[1]
local T = now_us()
local deadline = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local tk = KEYS[2 + n]
if redis.call('EXISTS', tk) == 1 then return {3, 0, 0, 0, T} end
local token_ms = tonumber(ARGV[3 + 4 * n])
local dims = {}
for i = 1, n do
  local o = 2 + (i - 1) * 4
  local d = {
    tag = ARGV[o + 1],
    window = tonumber(ARGV[o + 2]),
    configured = tonumber(ARGV[o + 3]),
    cost = tonumber(ARGV[o + 4]),
    log = KEYS[1 + i],
  }
  load_dim(h, d, T)
  prune_dim(d, T)
  dims[i] = d
end
local gate = num(redis.call('HGET', h, 'gate'))
if gate and gate <= T then gate = nil end
local last = num(redis.call('HGET', h, 'last'))
if last and last <= T then last = nil end
local t = T
if gate and gate > t then t = gate end
if last and last > t then t = last end
local base = t
local result = nil
for _, d in ipairs(dims) do
  if d.cost > 0 then
    local at = earliest_dim(d, base, d.cost)
    if not at then
      result = {2, d.cost, d.configured, 0, T}
      break
    end
    if at > t then t = at end
  end
end
if not result and deadline >= 0 and t > T + deadline then
  result = {1, t - T, 0, t, T}
end
if not result then
  -- Ids start at the server's time when a key's state is (re)created, so
  -- that a late cancel or correction for a reservation of an expired
  -- incarnation of the key cannot hit a new reservation with the same id.
  local id = num(redis.call('HGET', h, 'id')) or T
  redis.call('HSET', h, 'id', int(id + 1))
  for _, d in ipairs(dims) do
    if d.cost > 0 then
      redis.call('RPUSH', d.log, fmt(t, id, d.cost))
      d.sum = d.sum + d.cost
    end
  end
  if t > T then last = t end
  -- The token record lives as long as the reservation counts (at most
  -- token_ms): a cancel by token finds the id.
  local maxw = 0
  for _, d in ipairs(dims) do
    if d.window > maxw then maxw = d.window end
  end
  local ttl = math.ceil((t - T + maxw) / 1000) + 1000
  if ttl > token_ms then ttl = token_ms end
  redis.call('SET', tk, int(id), 'PX', ttl)
  result = {0, id, t - T, t, T}
end
local horizon = T
if gate then
  redis.call('HSET', h, 'gate', int(gate))
  if gate > horizon then horizon = gate end
else
  redis.call('HDEL', h, 'gate')
end
if last then
  redis.call('HSET', h, 'last', int(last))
  if last > horizon then horizon = last end
else
  redis.call('HDEL', h, 'last')
end
save(h, dims, T, horizon)
return result
