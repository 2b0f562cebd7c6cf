-- mark_ready.lua: mark a tenant's critical data loaded, unless Redis lost it meanwhile.
--
-- KEYS[1]  crm:{t}:meta   hash: ready, last-preload-ms, version, epoch
-- ARGV[1]  meta.epoch when the snapshot began (Store.begin_snapshot)
-- ARGV[2]  now, ms (last-preload-ms)
-- ARGV[3]  change-notification channel (crm:<t>:changes)
--
-- Guarantees: ready is set only in the epoch the snapshot was written into. A Redis that lost
-- its data (restarted empty) while the snapshot was being written has another epoch, or none,
-- and stays not ready: readers then answer "unavailable" instead of "not configured" or
-- "unknown user" for what the snapshot wrote before the loss. Otherwise meta.version is bumped
-- and published, so readers revalidate.
-- Returns the new meta.version, or -1 (nothing written) when the epoch changed.

if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
    return -1
end
redis.call('HSET', KEYS[1], 'ready', '1', 'last-preload-ms', ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[3], cjson.encode({version = version}))
return version
