-- gate: ARGV = until (us after now). KEYS = hash.
local h = KEYS[1]
local id, tm, g, last, ex = unpack_k(redis.call('HGET', h, 'k'))
local T = now_of(tm)
local u = T + tonumber(ARGV[1])
if not g or g < u then
  redis.call('HSET', h, 'k', pack_k(id, tm, u, last, ex))
  g = u
end
local ttl = math.ceil((g - T) / 1000) + 1000
local cur = redis.call('PTTL', h)
if cur < ttl then redis.call('PEXPIRE', h, ttl) end
return 1
