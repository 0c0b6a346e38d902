-- ARGV: now, account, limit ('' removes the budget), mode, window seconds, window text
-- usage so far is kept and counts in the current window (rolled under the old window first)
local name = ARGV[2]
account(name)
if ARGV[3] == '' then
  redis.call('HDEL', K_ACC, name .. '|lim', name .. '|mode', name .. '|win', name .. '|wtx', name .. '|ws')
  log('remove_budget', name, '', 0, 0, 0, 0, 0, 0, 0, 0, '')
  return 1
end
local win = tonumber(ARGV[5])
local ws = 0
if win > 0 then ws = math.floor(NOW / win) * win end
redis.call('HSET', K_ACC, name .. '|lim', ARGV[3], name .. '|mode', ARGV[4], name .. '|win', ARGV[5],
  name .. '|wtx', ARGV[6], name .. '|ws', int(ws))
local text = ARGV[6]
if text == '' then text = '-' end
log('set_budget', name, '', tonumber(ARGV[3]), 0, 0, 0, 0, 0, 0, 0, 'window=' .. text .. ' mode=' .. ARGV[4])
return 1
