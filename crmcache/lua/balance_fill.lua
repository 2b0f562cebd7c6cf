-- balance_fill.lua: store a balance fetched from the Wrapper, only while holding its lease.
--
-- KEYS[1]  crm:{t}:balance:<userId>        string: available credits, no TTL
-- KEYS[2]  crm:{t}:ref:credits:<userId>    hash: a cached 404
-- KEYS[3]  crm:{t}:lease:credits:<userId>  string: lease token
-- KEYS[4]  crm:{t}:meta                 hash: epoch, version (the answer's token)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the balance (decimal text), or "" when the Wrapper answered 404
-- ARGV[3]  negative TTL, ms
--
-- Guarantees: a balance already in Redis is never overwritten (SET NX): deductions and top-ups
-- keep it from then on. Nothing is written once the lease is gone (user-deleted deletes it).
-- The lease is released. Returns {epoch, version, written (1/0), the balance now cached or nil}.

--@include tokened
local answer = tokened(KEYS[#KEYS])
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
    return answer({0, redis.call('GET', KEYS[1])})
end
redis.call('DEL', KEYS[3])
if ARGV[2] == '' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'not-found', '1', 'fetched-ms', now,
        'expires-ms', now + tonumber(ARGV[3]))
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return answer({1, false})
end
local written = redis.call('SET', KEYS[1], ARGV[2], 'NX') and 1 or 0
return answer({written, redis.call('GET', KEYS[1])})