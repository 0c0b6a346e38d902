-- ARGV: now, rid
-- returns {1, returned} or {-1} unknown
expire_due()
local rid = ARGV[2]
local raw = redis.call('HGET', K_RES, rid)
if not raw then return {-1} end
local r = cjson.decode(raw)
if r[1] == 'released' then return {1, r[8]} end
if r[1] ~= 'held' then return {1, 0} end
for _, name in ipairs(path(r[2])) do
  hold(name, -r[3])
end
r[8] = r[3]
close(rid, r, 'released')
log('release', r[2], rid, r[3], 0, 0, 0, 0, 0, 0, 0, '')
return {1, r[3]}
