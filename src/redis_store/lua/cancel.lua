-- cancel: ARGV = id, n, n tags. KEYS = hash, n logs.
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 0 end
return cancel_id(h, tonumber(ARGV[1]), tonumber(ARGV[2]), 3)
