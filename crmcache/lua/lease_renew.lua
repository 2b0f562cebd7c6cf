-- lease_renew.lua: extend a lease only while we still hold it.
--
-- KEYS[1]  the lease key (e.g. crm:subscriber:leader)
-- ARGV[1]  our token
-- ARGV[2]  new time to live in ms
--
-- Guarantees: a holder whose lease expired and was taken by another can never extend (and so
-- never steal back) the other's lease. Returns 1 when renewed, 0 when the lease is not ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
