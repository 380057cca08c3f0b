-- gate: ARGV = until (us after now). KEYS = hash.
local function gate(KEYS, ARGV)
  local h = KEYS[1]
  local K = unpack_k(redis.call('HGET', h, 'k'))
  local T = now_of(K[TM])
  local u = T + tonumber(ARGV[1])
  if K[GATE] < u then
    K[GATE] = u
    redis.call('HSET', h, 'k', pack_k(K))
  end
  local ttl = math.ceil((K[GATE] - T) / 1000) + 1000
  local cur = redis.call('PTTL', h)
  if cur < ttl then redis.call('PEXPIRE', h, ttl) end
  return 1
end
