-- ARGV: now
-- returns how many leases expired (at most 1000 per call)
return expire_due()
