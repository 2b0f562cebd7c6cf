-- balance_read.lua: read a user's cached balance; on a miss, take its read-through lease.
--
-- KEYS[1]  crm:{t}:balance:<userId>        string: available credits (decimal text)
-- KEYS[2]  crm:{t}:ref:credits:<userId>    hash: a cached 404 (not-found, expires-ms)
-- KEYS[3]  crm:{t}:lease:credits:<userId>  string: lease token
-- KEYS[4]  crm:{t}:meta                 hash: epoch, version (the answer's token)
-- ARGV[1]  the caller's token (random)
-- ARGV[2]  lease time to live, ms
--
-- Guarantees: as ref_read.lua (one upstream fetch per user however many callers miss).
-- Returns {epoch, version, state, balance or nil, not-found expires-ms or nil} where state is "fresh" (a
-- balance), "not-found" (a fresh cached 404), "lease", "wait" or "failed".

--@include tokened
local answer = tokened(KEYS[#KEYS])
local balance = redis.call('GET', KEYS[1])
if balance then
    return answer({'fresh', balance})
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nf = redis.call('HMGET', KEYS[2], 'not-found', 'expires-ms')
if nf[1] and nf[2] and tonumber(nf[2]) > now then
    return answer({'not-found', false, nf[2]})
end
local lease = redis.call('GET', KEYS[3])
if not lease then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
    return answer({'lease'})
elseif lease == ARGV[1] then
    return answer({'lease'})
elseif string.sub(lease, 1, 1) == '!' then
    return answer({'failed'})
end
return answer({'wait'})