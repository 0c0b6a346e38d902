-- KEYS: 1 the pool's state hash. ARGV: expected version, JSON value
-- compare-and-set: returns 1 and bumps the version when it still is `expected`, else 0
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'version', version + 1)
return 1
