-- ARGV: now, horizon, rid...
-- delete the listed reservations that are (still) closed before `horizon`; returns how many
local horizon = tonumber(ARGV[2])
local purged = 0
for i = 3, #ARGV do
  local raw = redis.call('HGET', K_RES, ARGV[i])
  if raw then
    local r = cjson.decode(raw)
    if r[1] ~= 'held' and tonumber(r[10]) < horizon then
      redis.call('HDEL', K_RES, ARGV[i])
      purged = purged + 1
    end
  end
end
return purged
