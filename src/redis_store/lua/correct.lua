-- correct: ARGV = id, input tokens, output tokens, n, n tags. KEYS = hash, n logs.
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 0 end
local id = tonumber(ARGV[1])
local input = tonumber(ARGV[2])
local output = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local found = 0
for i = 1, n do
  local log = KEYS[1 + i]
  local tag = ARGV[4 + i]
  local code = string.sub(tag, 1, 1)
  if code ~= 'r' then
    local cost = output
    if code == 't' then cost = input + output elseif code == 'i' then cost = input end
    local idx, _, at, c = find(log, id)
    if idx then
      redis.call('LSET', log, idx, fmt(at, id, cost))
      if redis.call('HEXISTS', h, 'sum:' .. tag) == 1 then
        redis.call('HINCRBY', h, 'sum:' .. tag, int(cost - c))
      end
      found = 1
    end
  end
end
return found
