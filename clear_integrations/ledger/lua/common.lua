-- Shared prelude of every per-tenant ledger script (prepended to each script body).
-- KEYS: 1 accounts hash, 2 reservations hash, 3 leases zset, 4 events list; all carry the same {tenant}
-- hash tag, so one script touches one Redis Cluster slot.
-- Every redis.call costs a few microseconds inside EVALSHA, so the scripts make as few as they can.
-- ARGV[1] is always `now` (Unix seconds from the ledger's injected clock, never Redis TIME).
-- The rules mirror clear_integrations/ledger/core.py; one test suite holds both to the same behaviour.
local K_ACC, K_RES, K_LEASE, K_EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local NOW_S = ARGV[1]
local NOW = tonumber(NOW_S)

local function int(n)
  return string.format('%d', n)
end

-- add `delta` tokens to an account's held counter. Never HINCRBY a Lua number as such: Redis rejects the
-- text of a negative zero ('-0', from -r[3] of a 0-token reservation), which bricked the tenant for good
local function hold(name, delta)
  if delta ~= 0 then
    redis.call('HINCRBY', K_ACC, name .. '|hd', int(delta))
  end
end

-- the accounts a scope holds on: {tenant} or {tenant, tenant/session}
local function path(scope)
  local slash = string.find(scope, '/', 1, true)
  if slash then
    return {string.sub(scope, 1, slash - 1), scope}
  end
  return {scope}
end

-- event: {seq, ts, kind, account, rid, tokens, returned, prompt, completion, reasoning, estimated, late, over, note}
local function log(kind, account, rid, tokens, returned, prompt, completion, reasoning, estimated, late, over, note)
  local seq = redis.call('HINCRBY', K_ACC, '#seq', 1)
  redis.call('RPUSH', K_EVENTS, cjson.encode({seq, NOW_S, kind, account, rid, tokens, returned, prompt, completion,
    reasoning, estimated, late, over, note}))
  return seq
end

-- an account's counters, rolled to the fixed window (aligned to the epoch) that contains NOW
local function account(name)
  local v = redis.call('HMGET', K_ACC, name .. '|lim', name .. '|mode', name .. '|win', name .. '|ws',
    name .. '|sp', name .. '|hd')
  local a = {name = name, lim = tonumber(v[1]), mode = v[2] or 'hard', win = tonumber(v[3]) or 0,
    ws = tonumber(v[4]) or 0, sp = tonumber(v[5]) or 0, hd = tonumber(v[6]) or 0}
  if a.win > 0 then
    local ws = math.floor(NOW / a.win) * a.win
    if ws ~= a.ws then
      a.ws = ws
      a.sp = 0
      redis.call('HSET', K_ACC, name .. '|ws', int(ws), name .. '|sp', '0')
    end
  end
  return a
end

-- reservation record: {state, scope, tokens, requested, created, expires, charged, returned, late, closed}
local function close(rid, r, state)
  r[1] = state
  r[10] = NOW_S
  redis.call('HSET', K_RES, rid, cjson.encode(r))
  redis.call('ZREM', K_LEASE, rid)
end

-- release every held reservation whose lease ran out (expires <= NOW); returns how many
local function expire_due()
  local ids = redis.call('ZRANGEBYSCORE', K_LEASE, '-inf', NOW_S, 'LIMIT', 0, 1000)
  local count = 0
  for _, rid in ipairs(ids) do
    local raw = redis.call('HGET', K_RES, rid)
    local r = raw and cjson.decode(raw)
    if r and r[1] == 'held' then
      for _, name in ipairs(path(r[2])) do
        hold(name, -r[3])
      end
      r[8] = r[3]
      close(rid, r, 'expired')
      log('expire', r[2], rid, r[3], 0, 0, 0, 0, 0, 0, 0, '')
      count = count + 1
    else
      redis.call('ZREM', K_LEASE, rid)
    end
  end
  return count
end
