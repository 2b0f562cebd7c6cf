-- ref_read.lua: read a reference entry; on a miss, take its lease (memcache-style).
--
-- KEYS[1]  crm:{t}:ref:<kind>:<id>    hash: value, fetched-ms, expires-ms, not-found
-- KEYS[2]  crm:{t}:lease:<kind>:<id>  string: the fetching caller's token
-- KEYS[3]  crm:{t}:meta                 hash: epoch, version (the answer's token)
-- ARGV[1]  the caller's token (random)
-- ARGV[2]  lease time to live, ms
--
-- Guarantees: at most one caller at a time holds the lease of a key, so one upstream fetch
-- per key however many callers (threads or processes) miss at once. A lease "!<token>" marks
-- a fetch that failed a moment ago: callers serve stale (or fail) instead of refetching.
-- An entry is fresh while expires-ms is in the future (server clock).
-- Returns {epoch, version, now-ms, state, value, fetched-ms, expires-ms, not-found} where state is
-- "fresh", "lease" (the caller now holds the lease), "wait" (another caller fetches) or
-- "failed"; the entry fields are nil when there is no entry.

--@include tokened
local answer = tokened(KEYS[#KEYS])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('HMGET', KEYS[1], 'value', 'fetched-ms', 'expires-ms', 'not-found')
local state
if e[3] and tonumber(e[3]) > now then
    state = 'fresh'
else
    local lease = redis.call('GET', KEYS[2])
    if not lease then
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        state = 'lease'
    elseif lease == ARGV[1] then
        state = 'lease'
    elseif string.sub(lease, 1, 1) == '!' then
        state = 'failed'
    else
        state = 'wait'
    end
end
return answer({now, state, e[1], e[2], e[3], e[4]})