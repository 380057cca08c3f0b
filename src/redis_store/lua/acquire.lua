-- acquire: ARGV = deadline (us after now, -1: none), n, then n times
-- (tag, window us, configured limit, cost). KEYS = hash, n logs.
-- Returns {0, id, wait, at, now} | {1, wait, 0, at, now} | {2, cost, capacity, 0, now}.
local h = KEYS[1]
local T = now_us()
local deadline = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
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
