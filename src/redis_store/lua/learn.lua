-- learn: ARGV = tag, window us, configured, limit, remaining, reset us
-- (each -1: unknown), learn_limits (0|1), learned_ttl us. KEYS = hash, the
-- dimension's log. Returns the limit in force when it or the external
-- usage changed, else -1.
--
-- A learned limit (mirrors the in-memory SlidingWindow): 0 is ignored; it never
-- goes below max(1, floor(configured / 10)) nor above the configured one
-- (with learn_limits: configured * 100); it holds until learned_ttl after
-- the provider last said it (lu:<tag>), a repeated header refreshing it.
local h = KEYS[1]
local T = now_us()
local d = {
  tag = ARGV[1],
  window = tonumber(ARGV[2]),
  configured = tonumber(ARGV[3]),
  log = KEYS[2],
}
local limit = tonumber(ARGV[4])
local remaining = tonumber(ARGV[5])
local reset = tonumber(ARGV[6])
local learn_limits = ARGV[7] == '1'
local ttl = tonumber(ARGV[8])
load_dim(h, d, T)
prune_dim(d, T)
local changed = false
local dirty = false
if limit > 0 then
  local new = limit
  local floor = math.floor(d.configured / 10)
  if floor < 1 then floor = 1 end
  local ceiling = d.configured
  if learn_limits then ceiling = d.configured * 100 end
  if new < floor then new = floor end
  -- The ceiling wins over the floor (a configured 0 stays 0).
  if new > ceiling then new = ceiling end
  if new == d.configured or ttl <= 0 then
    new = d.configured
    d.lu = nil
  else
    d.lu = T + ttl
  end
  if new ~= d.lim then
    d.lim = new
    changed = true
  end
  dirty = true
end
if remaining >= 0 then
  -- A full walk of the log (issue #12 replaces it by running sums).
  local used = 0
  for _, e in ipairs(redis.call('LRANGE', d.log, 0, -1)) do
    local at, _, c = parse(e)
    if at <= T and at > T - d.window then used = used + c end
  end
  if d.xu and d.xu > T then used = used + d.xc end
  local ours = d.lim - used
  if ours < 0 then ours = 0 end
  if remaining < ours then
    local r = d.window
    if reset >= 0 and reset < r then r = reset end
    local u = T + r
    d.xc = (d.xc or 0) + (ours - remaining)
    if not d.xu or d.xu < u then d.xu = u end
    changed = true
  end
end
if changed or dirty then
  save(h, {d}, T, T)
end
if changed then return d.lim end
return -1
