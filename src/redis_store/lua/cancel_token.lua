-- cancel_token: gives back what an acquire that never answered its caller
-- (timed out, or its future dropped) reserved, if it ran at all.
-- ARGV = n, n times (tag, window us), tombstone ms. KEYS = hash, queue, n
-- entries hashes, the token's key.
-- The token's key holds the reservation id (written by acquire), or 'c'
-- once cancelled: a cancel that arrives before its acquire leaves 'c', so
-- that the acquire, should it still run, reserves nothing. Idempotent.
local h = KEYS[1]
local n = tonumber(ARGV[1])
local tk = KEYS[3 + n]
local v = redis.call('GET', tk)
if not v then
  redis.call('SET', tk, 'c', 'PX', tonumber(ARGV[2 + 2 * n]))
  return 0
end
if v == 'c' then return 0 end
local ttl = redis.call('PTTL', tk)
if ttl > 0 then redis.call('SET', tk, 'c', 'PX', ttl) end
if redis.call('EXISTS', h) == 0 then return 0 end
return cancel_id(h, KEYS[2], tonumber(v), dims_of(n, 2))
