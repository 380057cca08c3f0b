-- cancel: KEYS = the key's hash. ARGV[1] = packed numbers: id, ng, then
-- per group its hold (us) and number of limits k; ARGV[2 ..] = the
-- groups' names.
local function cancel(KEYS, ARGV)
  init()
  local id, pos = sunpack('<d', ARGV[1])
  local sh = shape_of(ARGV[1], pos, {unpk(ARGV, 2)}, false)
  return cancel_id(KEYS[1], sh, id)
end
