-- correct: ARGV = id, input tokens, output tokens, ng, then per group
-- (state field, window us, k) and per limit of it (tag). KEYS = hash,
-- queue, ng entries hashes.
-- O(1) per group: the entry is read by its id, and the running sums and
-- the cursors that cover it move by the difference. A correction that
-- changes no cost writes nothing.
local function correct(KEYS, ARGV)
  local h = KEYS[1]
  local groups, names = groups_of(KEYS, ARGV, tonumber(ARGV[4]), 5, 2)
  local v = redis.call('HMGET', h, unpack(names))
  local id = tonumber(ARGV[1])
  local input = tonumber(ARGV[2])
  local output = tonumber(ARGV[3])
  local found = 0
  local f = idf(id)
  local upd = {}
  for i, g in ipairs(groups) do
    -- No state (the key expired): nothing of it counts any more.
    if v[i + 1] then
      local e = redis.call('HGET', g.e, f)
      if e then
        found = 1
        local at = read_entry(g, e)
        local costs = {}
        local changed = false
        for j = 1, g.k do
          local code = string.sub(g.d[4 * j - 4 + TAG], 1, 1)
          local cost = g.c[j]
          if code == 't' then
            cost = input + output
          elseif code == 'i' then
            cost = input
          elseif code == 'o' then
            cost = output
          end
          costs[j] = cost
          if cost ~= g.c[j] then changed = true end
        end
        if changed then
          local s = {struct.unpack(GF[g.k], v[i + 1])}
          g.s = s
          redis.call('HSET', g.e, f, fmt_costs(g, at, costs))
          for j = 1, g.k do
            local o, delta = 4 * j + 4, costs[j] - g.c[j]
            s[o + SUM] = s[o + SUM] + delta
            if id <= s[FC] then s[o + FP] = s[o + FP] + delta end
            if id <= s[UC] then s[o + UP] = s[o + UP] + delta end
          end
          upd[#upd + 1] = g.f
          upd[#upd + 1] = pack_g(g)
        end
      end
    end
  end
  if #upd > 0 then redis.call('HSET', h, unpack(upd)) end
  return found
end
