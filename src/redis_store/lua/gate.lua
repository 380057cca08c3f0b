-- gate: KEYS = the key's hash. ARGV[1] = packed numbers: until (us after
-- now), ng, then per group its hold (us) and number of limits k;
-- ARGV[2 ..] = the groups' names. A later gate extends, an earlier one
-- never shortens; the key lives at least until it opens.
local function gate(KEYS, ARGV)
  init()
  local h = KEYS[1]
  local rel, pos = sunpack('<d', ARGV[1])
  local sh = shape_of(ARGV[1], pos, {unpk(ARGV, 2)}, false)
  local st = load_key(h, sh, rcall('HGET', h, 's'), nil)
  local u = st.T + rel
  if st.S[GATE] < u then
    st.S[GATE] = u
    save(st)
  end
  return 1
end
