-- snapshot_commit.lua: finish a snapshot of one data class: drop what the snapshot no longer
-- contains, raise the class floor to the snapshot's start, keep every version it knows.
--
-- KEYS[1]  crm:{t}:meta            hash: floor:<class>, tombstone-mark:<class>
-- KEYS[2]  crm:{t}:<class>         values hash
-- KEYS[3]  crm:{t}:stamps:<class>  stamps hash
-- ARGV[1]  the snapshot's start seq S0
-- ARGV[2]  the class name
-- ARGV[3]  meta.epoch when the snapshot began (Store.begin_snapshot)
-- ARGV[4]  tombstone retention in ms
--
-- Guarantees:
-- * a value is removed only when the snapshot did not contain it (its stamp's seq is below S0)
--   and no event newer than S0 wrote it;
-- * afterwards floor:<class> = S0, which refuses every late unversioned event received up to
--   S0, so unversioned stamps at or below S0 are redundant and deleted;
-- * no version is forgotten: a removed value whose stamp knew a version leaves the tombstone
--   "S0:version+", and a versioned tombstone below S0 becomes covering ("seq:version+": the
--   snapshot confirmed the delete), so a late older version cannot bring it back;
-- * memory stays bounded: versioned tombstones live at least the retention and at most about
--   twice it. meta tombstone-mark:<class> = "seq:ms" of the commit that started the current
--   retention period; once it is older than the retention, tombstones whose seq is below its
--   seq (received or found deleted before it) are deleted and the mark moves to this commit.
--   Stamps of present values stay as long as the values (they are bounded by the data).
-- Stamps above S0 are kept as they are. Nothing is done when Redis lost its data since the
-- snapshot began (meta.epoch changed): a floor at that S0 would refuse the new counter's stamps.
-- Returns {values removed, stamps dropped}, {-1, 0} when the snapshot is superseded, or
-- {-2, 0} when the epoch changed.

if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[3] then
    return {-2, 0}
end
local s0 = tonumber(ARGV[1])
local class = ARGV[2]
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor:' .. class) or '0')
if floor >= s0 then
    return {-1, 0}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mark_field = 'tombstone-mark:' .. class
local mark = redis.call('HGET', KEYS[1], mark_field) or ''
local mark_seq, mark_ms = string.match(mark, '^(%d+):(%d+)$')
local prune_below = 0
if not mark_seq or now - tonumber(mark_ms) >= tonumber(ARGV[4]) then
    prune_below = tonumber(mark_seq) or 0
    redis.call('HSET', KEYS[1], mark_field, ARGV[1] .. ':' .. now)
end

local removed = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    local stamp = redis.call('HGET', KEYS[3], field) or '0'
    local sseq, sver = string.match(stamp, '^(%d+):?(%d*)')
    if (tonumber(sseq) or 0) < s0 then
        redis.call('HDEL', KEYS[2], field)
        removed = removed + 1
        if sver ~= '' then
            redis.call('HSET', KEYS[3], field, ARGV[1] .. ':' .. sver .. '+')
        end
    end
end

-- Every stamp at or below S0 is now "S0..." of a value the snapshot wrote, or a tombstone.
local dropped = 0
local stamps = redis.call('HGETALL', KEYS[3])
for i = 1, #stamps, 2 do
    local field, stamp = stamps[i], stamps[i + 1]
    local sseq, sver, plus = string.match(stamp, '^(%d+):?(%d*)(%+?)$')
    sseq = tonumber(sseq) or 0
    if sseq <= s0 then
        if (sver or '') == '' or sseq < prune_below then
            redis.call('HDEL', KEYS[3], field)
            dropped = dropped + 1
        elseif plus == '' then
            redis.call('HSET', KEYS[3], field, stamp .. '+')
        end
    end
end
redis.call('HSET', KEYS[1], 'floor:' .. class, s0)
return {removed, dropped}
