-- cancel: ARGV = id, ng, then per group (state field, window us, k) and
-- per limit of it (tag). KEYS = hash, queue, ng entries hashes.
local function cancel(KEYS, ARGV)
  local h = KEYS[1]
  if redis.call('EXISTS', h) == 0 then return 0 end
  local groups, names = groups_of(KEYS, ARGV, tonumber(ARGV[2]), 3, 2)
  return cancel_id(h, KEYS[2], tonumber(ARGV[1]), groups, names)
end
