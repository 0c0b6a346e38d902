-- ARGV: now, rid, charged, prompt, completion, reasoning, estimated (0/1)
-- returns {1, returned}, {-1} unknown, {-2, state} closed
expire_due()
local rid = ARGV[2]
local raw = redis.call('HGET', K_RES, rid)
if not raw then return {-1} end
local r = cjson.decode(raw)
if r[1] == 'committed' then return {1, r[8]} end
if r[1] == 'released' then return {-2, 'released'} end
local late, reserved = 0, r[3]
if r[1] == 'expired' then
  late, reserved = 1, 0
end
local charged, estimated = tonumber(ARGV[3]), tonumber(ARGV[7])
local returned = reserved - charged
if returned < 0 then returned = 0 end
for _, name in ipairs(path(r[2])) do
  local a = account(name)
  redis.call('HSET', K_ACC, name .. '|hd', int(a.hd - reserved), name .. '|sp', int(a.sp + charged))
end
r[7], r[8], r[9] = charged, returned, late
close(rid, r, 'committed')
local over = charged - r[3]
if over < 0 then over = 0 end
log('commit', r[2], rid, charged, returned, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), estimated,
  late, over, '')
return {1, returned}
