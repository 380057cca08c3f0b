-- correct: ARGV = id, input tokens, output tokens, n, n times (tag,
-- window us). KEYS = hash, queue, n entries hashes.
-- O(1) per dimension: the entry is read by its id, and the running sum
-- and the cursors that cover it move by the difference.
local h = KEYS[1]
local dims = dims_of(tonumber(ARGV[4]), 5)
local names = {}
for _, d in ipairs(dims) do names[#names + 1] = 'c:' .. d.tag end
local v = redis.call('HMGET', h, unpack(names))
local id = tonumber(ARGV[1])
local input = tonumber(ARGV[2])
local output = tonumber(ARGV[3])
local found = 0
local f = int(id)
local upd = {}
for i, d in ipairs(dims) do
  local code = string.sub(d.tag, 1, 1)
  -- No state (the key expired): nothing of it counts any more.
  if code ~= 'r' and v[i] then
    local cost = output
    if code == 't' then cost = input + output elseif code == 'i' then cost = input end
    local e = redis.call('HGET', d.e, f)
    if e then
      local at, c = parse(e)
      redis.call('HSET', d.e, f, fmt(at, cost))
      if unpack_c(d, v[i]) then
        local delta = cost - c
        d.sum = d.sum + delta
        if id <= d.fc then d.fp = d.fp + delta end
        if id <= d.uc then d.up = d.up + delta end
        upd[#upd + 1] = 'c:' .. d.tag
        upd[#upd + 1] = pack_c(d)
      end
      found = 1
    end
  end
end
if #upd > 0 then redis.call('HSET', h, unpack(upd)) end
return found
