-- snapshot_chunk.lua: write one chunk of a Wrapper snapshot (a preload) into one data class.
--
-- KEYS[1]  crm:{t}:meta            hash: floor:<class>, epoch
-- KEYS[2]  crm:{t}:<class>         values hash
-- KEYS[3]  crm:{t}:stamps:<class>  stamps hash
-- ARGV[1]  the snapshot's start seq S0 (INCR crm:{t}:seq taken before the Wrapper was asked)
-- ARGV[2]  the class name
-- ARGV[3]  meta.epoch when the snapshot began (Store.begin_snapshot)
-- ARGV[4..] field, value, field, value, ...
--
-- Guarantees: a field is written only when nothing newer than S0 wrote it, so an event
-- received after the snapshot began is never overwritten (events are stamped at receipt, and
-- every stamp taken after S0 is greater than S0). A written field is stamped "S0:version+"
-- when its stamp knew a version (the snapshot reflects every event received before S0, so the
-- entity is at that version or later: an older version stays refused after the resync), else
-- "S0". Either covers every event received before S0 (see apply_events.lua), and its seq S0
-- is how snapshot_commit.lua recognises what the snapshot wrote. A snapshot older than the
-- class floor (a newer snapshot already committed) writes nothing. Nor does a snapshot begun
-- before Redis lost its data (meta.epoch changed): its S0 came from a counter that no longer
-- exists, and its stamps would sit above every stamp the new counter hands out.
-- Returns the number of fields written, -1 when the snapshot is superseded, -2 when the epoch
-- changed.

if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[3] then
    return -2
end
local s0 = tonumber(ARGV[1])
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor:' .. ARGV[2]) or '0')
if floor >= s0 then
    return -1
end
local written = 0
for i = 4, #ARGV, 2 do
    local field = ARGV[i]
    local stamp = redis.call('HGET', KEYS[3], field) or '0'
    local sseq, sver = string.match(stamp, '^(%d+):?(%d*)')
    if (tonumber(sseq) or 0) < s0 then
        local snapshot_stamp = ARGV[1]
        if sver ~= '' then
            snapshot_stamp = ARGV[1] .. ':' .. sver .. '+'
        end
        redis.call('HSET', KEYS[2], field, ARGV[i + 1])
        redis.call('HSET', KEYS[3], field, snapshot_stamp)
        written = written + 1
    end
end
return written
