-- cancel: ARGV = id, n, n tags. KEYS = hash, n logs.
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 0 end
local id = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local last = nil
local found = 0
for i = 1, n do
  local log = KEYS[1 + i]
  local tag = ARGV[2 + i]
  local idx, e, _, c = find(log, id)
  if idx then
    redis.call('LREM', log, -1, e)
    if redis.call('HEXISTS', h, 'sum:' .. tag) == 1 then
      redis.call('HINCRBY', h, 'sum:' .. tag, int(-c))
    end
    found = 1
  end
  local b = redis.call('LINDEX', log, -1)
  if b then
    local at = parse(b)
    if not last or at > last then last = at end
  end
end
if last then
  redis.call('HSET', h, 'last', int(last))
else
  redis.call('HDEL', h, 'last')
end
return found
