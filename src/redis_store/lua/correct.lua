-- correct: ARGV = id, input tokens, output tokens, n, n times (tag,
-- window us). KEYS = hash, queue, n entries hashes.
-- O(1) per dimension: the entry is read by its id, and the running sum
-- and the cursors that cover it move by the difference.
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 0 end
local id = tonumber(ARGV[1])
local input = tonumber(ARGV[2])
local output = tonumber(ARGV[3])
local found = 0
local f = int(id)
local upd = {}
for _, d in ipairs(dims_of(tonumber(ARGV[4]), 5)) do
  local tg = d.tag
  local code = string.sub(tg, 1, 1)
  if code ~= 'r' then
    local cost = output
    if code == 't' then cost = input + output elseif code == 'i' then cost = input end
    local v = redis.call('HGET', d.e, f)
    if v then
      local at, c = parse(v)
      redis.call('HSET', d.e, f, fmt(at, cost))
      local delta = cost - c
      local s = redis.call('HMGET', h, 'sum:' .. tg, 'fc:' .. tg, 'fp:' .. tg,
        'uc:' .. tg, 'up:' .. tg)
      if s[1] then
        upd[#upd + 1] = 'sum:' .. tg
        upd[#upd + 1] = int(tonumber(s[1]) + delta)
        if s[2] and s[3] and id <= tonumber(s[2]) then
          upd[#upd + 1] = 'fp:' .. tg
          upd[#upd + 1] = int(tonumber(s[3]) + delta)
        end
        if s[4] and s[5] and id <= tonumber(s[4]) then
          upd[#upd + 1] = 'up:' .. tg
          upd[#upd + 1] = int(tonumber(s[5]) + delta)
        end
      end
      found = 1
    end
  end
end
if #upd > 0 then redis.call('HSET', h, unpack(upd)) end
return found
