-- cancel_token: gives back what an acquire that never answered its caller
-- (timed out, or its future dropped) reserved, if it ran at all.
-- KEYS = the key's hash. ARGV[1] = the token (8 bytes); ARGV[2] = packed
-- numbers: the tombstone's life (ms), ng, then per group its hold (us)
-- and number of limits k; ARGV[3 ..] = the groups' names.
-- The acquire recorded 't' .. token -> reservation id beside its entry.
-- Found: the reservation is cancelled. Either way a tombstone 'c' is left
-- under the token's own key (a repeated cancel finds it and does
-- nothing); not found, the cancel may have overtaken its acquire, so the
-- state's flag tb tells acquires to look for it: the acquire, should it
-- still run, reserves nothing.
local function cancel_token(KEYS, ARGV)
  init()
  local h = KEYS[1]
  local tok = ARGV[1]
  local tomb_ms, pos = sunpack('<d', ARGV[2])
  local sh = shape_of(ARGV[2], pos, {unpk(ARGV, 3)}, false)
  local tk = h .. ':k:' .. tok
  if rcall('EXISTS', tk) == 1 then return 0 end
  local v = rcall('HGET', h, 't' .. tok)
  rcall('SET', tk, 'c', 'PX', tomb_ms)
  if v then return cancel_id(h, sh, sunpack('<d', v)) end
  local st = load_key(h, sh, rcall('HGET', h, 's'), nil)
  local u = st.T + tomb_ms * 1000
  if st.S[TB] < u then
    st.S[TB] = u
    save(st)
  end
  return 0
end
