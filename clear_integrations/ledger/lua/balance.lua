-- ARGV: now, account
-- returns {limit or '', mode, window seconds, window start, spent, held}
expire_due()
local a = account(ARGV[2])
local limit = ''
if a.lim then limit = int(a.lim) end
return {limit, a.mode, a.win, a.ws, a.sp, a.hd}
