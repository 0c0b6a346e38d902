-- ARGV: now, account
-- zero spent; usage totals count commits after the reset event (|rs); held tokens stay with their reservations
local name = ARGV[2]
account(name)
local seq = log('reset', name, '', 0, 0, 0, 0, 0, 0, 0, 0, '')
redis.call('HSET', K_ACC, name .. '|sp', '0', name .. '|rs', seq)
return 1
