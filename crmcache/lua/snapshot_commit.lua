-- snapshot_commit.lua: finish a snapshot of one data class: drop what the snapshot no longer
-- contains and raise the class floor to the snapshot's start.
--
-- KEYS[1]  crm:{t}:meta            hash: floor:<class>
-- KEYS[2]  crm:{t}:<class>         values hash
-- KEYS[3]  crm:{t}:stamps:<class>  stamps hash
-- ARGV[1]  the snapshot's start seq S0
-- ARGV[2]  the class name
-- ARGV[3]  meta.epoch when the snapshot began (Store.begin_snapshot)
--
-- Guarantees: a value is removed only when the snapshot did not contain it (its stamp is not
-- S0) and no event newer than S0 wrote it. Afterwards floor:<class> = S0, so every stamp at or
-- below S0 (snapshot stamps and old tombstones) is redundant and is deleted: a late event
-- stamped at or below S0 is still refused by the floor. Stamps above S0 are kept.
-- Nothing is done when Redis lost its data since the snapshot began (meta.epoch changed): a
-- floor at that S0 would refuse the new counter's stamps.
-- Returns {values removed, stamps dropped}, {-1, 0} when the snapshot is superseded, or
-- {-2, 0} when the epoch changed.

if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[3] then
    return {-2, 0}
end
local s0 = tonumber(ARGV[1])
local floor_field = 'floor:' .. ARGV[2]
local floor = tonumber(redis.call('HGET', KEYS[1], floor_field) or '0')
if floor >= s0 then
    return {-1, 0}
end

local removed = 0
local fields = redis.call('HKEYS', KEYS[2])
for _, field in ipairs(fields) do
    local stamp = redis.call('HGET', KEYS[3], field)
    local sseq = stamp and tonumber(string.match(stamp, '^(%d+)')) or 0
    if sseq < s0 then
        redis.call('HDEL', KEYS[2], field)
        removed = removed + 1
    end
end

local dropped = 0
local stamps = redis.call('HGETALL', KEYS[3])
for i = 1, #stamps, 2 do
    local sseq = tonumber(string.match(stamps[i + 1], '^(%d+)')) or 0
    if sseq <= s0 then
        redis.call('HDEL', KEYS[3], stamps[i])
        dropped = dropped + 1
    end
end
redis.call('HSET', KEYS[1], floor_field, s0)
return {removed, dropped}
