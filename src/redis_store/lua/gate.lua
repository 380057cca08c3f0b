-- gate: ARGV = until (us after now). KEYS = hash.
local h = KEYS[1]
local T = now_us()
local u = T + tonumber(ARGV[1])
local g = num(redis.call('HGET', h, 'gate'))
if not g or g < u then
  redis.call('HSET', h, 'gate', int(u))
  g = u
end
local ttl = math.ceil((g - T) / 1000) + 1000
local cur = redis.call('PTTL', h)
if cur < ttl then redis.call('PEXPIRE', h, ttl) end
return 1
