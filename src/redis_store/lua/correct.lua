-- correct: KEYS = the key's hash. ARGV[1] = packed numbers: id, input
-- tokens, output tokens, ng, then per group its hold (us) and number of
-- limits k; ARGV[2 ..] = the groups' names.
-- O(1): the entry is read by its id, and the running sums and the
-- cursors that cover it move by the difference, in each group that still
-- counts it. A correction that changes no cost writes nothing.
local function correct(KEYS, ARGV)
  init()
  local h = KEYS[1]
  local id, input, output, pos = sunpack('<ddd', ARGV[1])
  local sh = shape_of(ARGV[1], pos, {unpk(ARGV, 2)}, false)
  local f = idf(id)
  local r = rcall('HMGET', h, 's', f)
  local v, e = r[1], r[2]
  -- No state (the key expired): nothing of it counts any more.
  if not (e and v and #v == 8 * sh.ns) then return 0 end
  local at = read_entry(sh, e)
  local E, C = sh.E, sh.C
  local changed = false
  for l = 1, sh.nl do
    local code, cost = sh.code[l], E[l]
    -- The request charge stays, and so does a limit the reservation cost
    -- nothing in when it was admitted (as in the in-memory window).
    if none(cost) then
      cost = NONE
    elseif code == 't' then
      cost = input + output
    elseif code == 'i' then
      cost = input
    elseif code == 'o' then
      cost = output
    end
    C[l] = cost
    if cost ~= E[l] then changed = true end
  end
  if not changed then return 1 end
  local S = {sunpack(sh.fs, v)}
  for i = 1, sh.ng do
    local o, first = sh.off[i], sh.first[i]
    if id >= S[o + HD] then
      for j = 1, sh.k[i] do
        local so, delta = o + 4 * j + 4, C[first + j - 1] - E[first + j - 1]
        S[so + SUM] = S[so + SUM] + delta
        if id <= S[o + FC] then S[so + FP] = S[so + FP] + delta end
        if id <= S[o + UC] then S[so + UP] = S[so + UP] + delta end
      end
    end
  end
  -- The token record stays with the entry.
  rcall('HSET', h, f, fmt_entry(sh, at, C) .. (token_of(sh, e) or ''),
    's', spack(sh.fs, unpk(S, 1, sh.ns)))
  return 1
end
