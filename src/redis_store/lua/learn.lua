-- learn: ARGV = tag, window us, configured, limit, remaining, reset us
-- (each -1: unknown), learn_limits (0|1). KEYS = hash, the dimension's log.
-- Returns the limit in force when the state changed, else -1.
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
load_dim(h, d)
prune_dim(d, T)
local changed = false
if limit >= 0 then
  local new = limit
  if not learn_limits and d.configured < new then new = d.configured end
  if new ~= d.lim then
    d.lim = new
    changed = true
  end
end
if remaining >= 0 then
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
if changed then
  save(h, {d}, T, T)
  return d.lim
end
return -1
