-- read_cost.lua: one operation's credit cost, with the tenant's readiness and version.
--
-- KEYS[1]  crm:{t}:meta          hash: version, ready
-- KEYS[2]  crm:{t}:credit-costs  hash: operationCode -> cost (JSON number text)
-- ARGV[1]  operationCode
--
-- Guarantees: the cost and the version are read at the same instant, so a reader that caches
-- the cost under that version drops it on any later change (every applied change bumps
-- meta.version). A missing cost means "not configured" only when ready is "1".
-- Returns {version, ready ("1" or nil), cost or nil}.

local meta = redis.call('HMGET', KEYS[1], 'version', 'ready')
return {meta[1] or '0', meta[2], redis.call('HGET', KEYS[2], ARGV[1])}
