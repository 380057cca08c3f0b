-- cancel: ARGV = id, n, n times (tag, window us). KEYS = hash, queue, n
-- entries hashes.
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return 0 end
return cancel_id(h, KEYS[2], tonumber(ARGV[1]), dims_of(tonumber(ARGV[2]), 3))
