-- lease_release.lua: give a lease up, only if we still hold it.
--
-- KEYS[1]  the lease key
-- ARGV[1]  our token
--
-- Guarantees: never deletes a lease another holder has taken since ours expired.
-- Returns 1 when released, 0 when the lease was not ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
