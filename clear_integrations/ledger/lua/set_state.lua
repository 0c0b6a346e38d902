-- KEYS: 1 the pool's state hash. ARGV: expected version, JSON value, writer (a unique id of this write)
-- compare-and-set: returns 1 and bumps the version when it still is `expected`, else 0; a retry of a write
-- that already landed (its reply was lost with the connection) finds its own writer id and answers 1 again
local current = redis.call('HMGET', KEYS[1], 'version', 'writer')
local version = tonumber(current[1] or '0')
local expected = tonumber(ARGV[1])
if version ~= expected then
  if version == expected + 1 and current[2] == ARGV[3] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'version', version + 1, 'writer', ARGV[3])
return 1
