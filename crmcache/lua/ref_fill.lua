-- ref_fill.lua: store a fetched reference entry, only if the caller still holds its lease.
--
-- KEYS[1]  crm:{t}:ref:<kind>:<id>    hash: value, fetched-ms, expires-ms, not-found
-- KEYS[2]  crm:{t}:lease:<kind>:<id>  string: lease token
-- KEYS[3]  crm:{t}:meta                 hash: epoch, version (the answer's token)
-- ARGV[1]  the caller's lease token
-- ARGV[2]  the value (JSON text); ignored for a not-found entry
-- ARGV[3]  "1" to store a not-found (404) entry, else "0"
-- ARGV[4]  freshness, ms (the entry's TTL, or the negative TTL)
-- ARGV[5]  key lifetime, ms (freshness plus the stale-if-error window)
--
-- Guarantees: an invalidation (user-changed, hierarchy-changed, ...) deletes both the entry
-- and the lease, so a value fetched before it finds the lease gone and is NOT written back.
-- The lease is released on success.
-- Returns {epoch, version, 1, now-ms, expires-ms} when written, {epoch, version, 0} when the
-- lease was lost.

--@include tokened
local answer = tokened(KEYS[#KEYS])
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return answer({0})
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + tonumber(ARGV[4])
redis.call('DEL', KEYS[1])
if ARGV[3] == '1' then
    redis.call('HSET', KEYS[1], 'not-found', '1', 'fetched-ms', now, 'expires-ms', expires)
else
    redis.call('HSET', KEYS[1], 'value', ARGV[2], 'fetched-ms', now, 'expires-ms', expires)
end
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]), tonumber(ARGV[4])))
redis.call('DEL', KEYS[2])
return answer({1, now, expires})