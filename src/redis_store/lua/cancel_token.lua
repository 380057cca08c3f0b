-- cancel_token: gives back what an acquire that never answered its caller
-- (timed out, or its future dropped) reserved, if it ran at all.
-- ARGV = the token (8 bytes), the tombstone's life (ms), ng, then per
-- group (state field, window us, k) and per limit of it (tag). KEYS =
-- hash, queue, ng entries hashes, the two token generations, the token's
-- own key.
-- The acquire recorded token -> reservation id in a token generation (or,
-- booked far ahead, under the token's own key). Found: the reservation is
-- cancelled and the record marked 'c' (idempotent). Not found: the cancel
-- may have overtaken its acquire, so it leaves a tombstone 'c' under the
-- token's own key, and the flag tb in the state hash tells acquires to
-- look for it: the acquire, should it still run, reserves nothing.
local function cancel_token(KEYS, ARGV)
  local h = KEYS[1]
  local tok = ARGV[1]
  local tomb_ms = tonumber(ARGV[2])
  local ng = tonumber(ARGV[3])
  local tk = KEYS[5 + ng]
  local v = redis.call('GET', tk)
  local where = tk
  if not v then
    for p = 0, 1 do
      v = redis.call('HGET', KEYS[3 + ng + p], tok)
      if v then
        where = KEYS[3 + ng + p]
        break
      end
    end
  end
  if not v then
    redis.call('SET', tk, 'c', 'PX', tomb_ms)
    local K = unpack_k(redis.call('HGET', h, 'k'))
    local T = now_of(K[TM])
    local u = T + tomb_ms * 1000
    if K[TB] < u then
      K[TB] = u
      redis.call('HSET', h, 'k', pack_k(K))
    end
    extend(h, tomb_ms + 1000)
    return 0
  end
  if v == 'c' then return 0 end
  if where == tk then
    local ttl = redis.call('PTTL', tk)
    if ttl > 0 then redis.call('SET', tk, 'c', 'PX', ttl) end
  else
    redis.call('HSET', where, tok, 'c')
  end
  if redis.call('EXISTS', h) == 0 then return 0 end
  local groups, names = groups_of(KEYS, ARGV, ng, 4, 2)
  return cancel_id(h, KEYS[2], struct.unpack('<d', v), groups, names)
end
