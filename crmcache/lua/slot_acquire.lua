-- slot_acquire.lua: take one of a limited number of slots (a counting semaphore with leases).
--
-- KEYS[1]  crm:{preload}:slots   zset: holder token -> lease expiry (ms, server clock)
-- ARGV[1]  the caller's token (random)
-- ARGV[2]  how many slots exist
-- ARGV[3]  lease, ms: a holder that dies frees its slot after this long
--
-- Guarantees: at most ARGV[2] unexpired holders at any instant, whoever asks (every worker
-- process of the fleet). A holder asking again renews its lease. Expired holders are dropped.
-- Returns 1 when the caller holds a slot, 0 when all are taken.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 1
end
return 0
