-- preload_progress.lua: count one tenant's outcome in the preload run it belongs to.
--
-- KEYS[1]  crm:{preload}:run     hash: id, total, done, failed, retried, started-ms, finished-ms
-- KEYS[2]  crm:{preload}:failed  hash: tenant -> why its preload failed
-- ARGV[1]  the run id the task was given
-- ARGV[2]  tenant
-- ARGV[3]  outcome: "done", "failed" (final) or "retry" (it will be tried again)
-- ARGV[4]  reason (for "failed" and "retry")
--
-- Guarantees: an outcome of an older run (a newer run replaced the hash) changes nothing.
-- A tenant that succeeds is removed from the failed hash; the run gets finished-ms once
-- done + failed reaches total. Returns {done, failed, total}, or {} for another run.

if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
    return {}
end
if ARGV[3] == 'done' then
    redis.call('HINCRBY', KEYS[1], 'done', 1)
    redis.call('HDEL', KEYS[2], ARGV[2])
elseif ARGV[3] == 'failed' then
    redis.call('HINCRBY', KEYS[1], 'failed', 1)
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
else
    redis.call('HINCRBY', KEYS[1], 'retried', 1)
    redis.call('HSET', KEYS[2], ARGV[2], 'retrying: ' .. ARGV[4])
end
local r = redis.call('HMGET', KEYS[1], 'done', 'failed', 'total')
local done, failed, total = tonumber(r[1]) or 0, tonumber(r[2]) or 0, tonumber(r[3]) or 0
if done + failed >= total and not redis.call('HGET', KEYS[1], 'finished-ms') then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'finished-ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
return {done, failed, total}
