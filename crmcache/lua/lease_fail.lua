-- lease_fail.lua: give up a read-through lease after a failed upstream fetch.
--
-- KEYS[1]  crm:{t}:lease:<kind>:<id>
-- ARGV[1]  the caller's lease token
-- ARGV[2]  ms during which other callers should not refetch (0: release at once)
--
-- Guarantees: only the holder changes the lease. For ARGV[2] ms the lease reads "!<token>",
-- which ref_read.lua / balance_read.lua report as "failed": during a Wrapper outage each key
-- is fetched at most once per ARGV[2] ms across every reader process. An invalidation still
-- deletes it. Returns 1 when the lease was ours, else 0.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], '!' .. ARGV[1], 'PX', ARGV[2])
else
    redis.call('DEL', KEYS[1])
end
return 1
