-- ARGV: now, rid, scope, tokens, minimum (-1: exactly `tokens`; 0: whatever is left, maybe nothing), expires
-- returns {1, granted, limited} or {0, refused_account, account1, remaining1, ...}; idempotent by rid
-- (a retry returns {1, granted, limited, requested, created, expires} of the first call);
-- limited is 1 when a hard budget on the path bounds the grant
local rid, scope, expires = ARGV[2], ARGV[3], ARGV[6]
local existing = redis.call('HGET', K_RES, rid)
if existing then -- a retried call: the reservation was made, never hold twice
  local r = cjson.decode(existing)
  local limited = 0
  for _, name in ipairs(path(r[2])) do
    local a = account(name)
    if a.lim and a.mode == 'hard' then limited = 1 end
  end
  return {1, r[3], limited, r[4], r[5], r[6]}
end
expire_due()
local tokens, minimum = tonumber(ARGV[4]), tonumber(ARGV[5])
local accounts, remaining = {}, {}
local grant, refused, tightest = tokens, nil, nil
for i, name in ipairs(path(scope)) do
  local a = account(name)
  accounts[i] = a
  if a.lim then
    local left = a.lim - a.sp - a.hd
    if left < 0 then left = 0 end
    a.left = left
    remaining[#remaining + 1] = name
    remaining[#remaining + 1] = left
    if a.mode == 'hard' then
      if tightest == nil or left < tightest.left then tightest = a end
      if refused == nil and minimum < 0 and left < tokens then refused = name end
      if left < grant then grant = left end
    end
  end
end
if minimum < 0 then
  grant = tokens
elseif grant < minimum and tightest then
  refused = tightest.name
end
if refused then
  return {0, refused, unpack(remaining)}
end
local over, limited = 0, 0
for _, a in ipairs(accounts) do
  if a.lim and a.mode == 'hard' then limited = 1 end
  if a.lim and a.mode == 'soft' then
    local o = a.sp + a.hd + grant - a.lim
    if o > grant then o = grant end
    if o > over then over = o end
  end
  hold(a.name, grant)
end
redis.call('HSET', K_RES, rid, cjson.encode({'held', scope, grant, tokens, NOW_S, expires, 0, 0, 0, ''}))
redis.call('ZADD', K_LEASE, expires, rid)
log('reserve', scope, rid, grant, 0, 0, 0, 0, 0, 0, over, '')
return {1, grant, limited}
