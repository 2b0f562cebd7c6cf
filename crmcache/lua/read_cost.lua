-- read_cost.lua: one operation's credit cost, with the tenant's readiness and version.
--
-- KEYS[1]  crm:{t}:meta          hash: version, ready, epoch
-- KEYS[2]  crm:{t}:credit-costs  hash: operationCode -> cost (JSON number text)
-- ARGV[1]  operationCode
-- ARGV[2]  a random epoch, stored if meta has none yet
-- ARGV[3]  a meta field upstream-seq:<stream> to return with the data, or ''
--
-- Guarantees: the cost and the (epoch, version) are read at the same instant, so a reader
-- that caches the cost under them drops it on any later change (every applied change bumps
-- meta.version; data lost by Redis takes the epoch with it). A missing cost means "not
-- configured" only when ready is "1".
-- Returns {version, ready ("1" or nil), epoch, cost or nil, upstream seq or nil}.

--@include read_meta

local version, ready, epoch, upstream = read_meta(KEYS[1], ARGV[2], ARGV[3])
return {version, ready, epoch, redis.call('HGET', KEYS[2], ARGV[1]), upstream}
