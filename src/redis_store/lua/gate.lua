-- gate: ARGV = until (us after now). KEYS = hash.
local function gate(KEYS, ARGV)
  local h = KEYS[1]
  local kw = unpack_k(redis.call('HGET', h, 'k'))
  local T = now_of(kw.tm)
  local u = T + tonumber(ARGV[1])
  local g = kw.gate
  if not g or g < u then
    kw.gate = u
    redis.call('HSET', h, 'k', pack_k(kw))
    g = u
  end
  local ttl = math.ceil((g - T) / 1000) + 1000
  local cur = redis.call('PTTL', h)
  if cur < ttl then redis.call('PEXPIRE', h, ttl) end
  return 1
end
