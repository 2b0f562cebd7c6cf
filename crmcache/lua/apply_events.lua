-- apply_events.lua: apply one tenant's batch of stamped events with versioned, idempotent writes.
--
-- KEYS[1]            crm:{t}:meta        hash: version, last-event-ms, floor:<class>
-- KEYS[2]            crm:{t}:event-ids   zset: eventId -> applied-at ms (dedupe window)
-- KEYS[3 .. 2+2n]    per data class, in keyspace.DATA_CLASSES order: values hash, stamps hash
-- KEYS[3+2n ..]      reference entries and leases to delete (invalidations)
-- ARGV[1]            JSON list of the n data class names (for the floor:<class> meta fields)
-- ARGV[2]            JSON batch:
--                    [[stamp, seq, version|-1, eventId|"", writes, invalidations, deltas
--                      (, stream, upstream seq, upstream seq seen before it|-1)], ...]
--                    writes: [[classIndex (1-based), field, value|false (= delete)], ...]
--                    invalidations: [KEYS index, ...]
--                    deltas: [[KEYS index of a balance, amount], ...] (credit top-ups)
-- ARGV[3]            dedupe window in ms
-- ARGV[4]            change-notification channel (crm:<t>:changes)
-- KEYS[#KEYS-1]      crm:{t}:upstream-pending  hash: "<stream>:<prev>" -> upstream seq
-- KEYS[#KEYS]        crm:{t}:applied-batches  zset: a batch's highest stamp -> applied-at ms
-- ARGV[5]            how long a batch stays recorded there, ms
--
-- Stamps (crm:{t}:stamps:<class>, see crmcache/keyspace.py): "seq:version" was written by an
-- event carrying an upstream version; "seq" (an unversioned write) and "seq:version+" (written
-- or confirmed by a snapshot begun at seq: the entity is at that version or later) cover every
-- event received up to seq. A field without a stamp is covered by the class floor (the last
-- committed snapshot's start), with no version known.
--
-- Guarantees:
-- * a field is written only by an event newer than the field's stamp: against "seq:version"
--   a versioned event needs a higher version; against a covering stamp (or none) an event
--   needs a later receipt than the stamp and the floor, and, when the stamp knows a version,
--   a higher version. So a resync never lowers what an entity's last applied version was;
-- * a versioned event refused because a covering stamp holds it (it was received before the
--   snapshot began, so the snapshot already reflects it) raises that stamp's version to its
--   own: a later-received but older version cannot then overwrite the snapshot's value;
-- * a stamp's seq never goes down: a higher version received earlier keeps the seq it
--   overwrote, so that a snapshot commit never mistakes the value for one it did not see;
-- * a delete keeps its stamp as a tombstone, so a late older write cannot resurrect the value;
-- * an eventId seen within the dedupe window is a no-op, so a redelivered task changes nothing;
-- * invalidations delete the reference entry and its lease, so a read-through fetch that began
--   before the invalidation cannot write its older value back (its lease token is gone);
-- * a credit delta is added to a cached balance once per eventId (the caller gives delta
--   events without an id a stamp-based one); a balance not cached is left alone (the next
--   read-through fetches the Wrapper's balance, which includes the top-up);
-- * meta upstream-seq:<stream> (what a "<stream>:<seq>" token is checked against) only rises,
--   and only to an event's upstream seq once the event the subscriber saw before it on that
--   stream (its "prev") is applied too; an event applied ahead of its prev waits in
--   upstream-pending until the prev arrives. An event with no prev (the first the subscriber
--   saw since it started; it resyncs the tenant then) raises it directly, and so does a gap:
--   a lost event never arrives, and the subscriber resyncs the tenant;
-- * when anything changed, meta.version is bumped and published on ARGV[4], with the number of
--   critical fields written and, of those, access fields (roles, user-status, user-roles);
-- * every batch that ran is recorded by its highest stamp for ARGV[5] ms, changed or not, so
--   the subscriber can tell a batch held by a hung worker from one that was applied.
-- * the reply names the (epoch, version) the batch left: its consistency token. A tenant with
--   no epoch yet gets one here (Redis's clock; readers and preloads make theirs at random).
-- Returns {fields written, writes skipped as stale, duplicate events, meta version, epoch}.

local classes = cjson.decode(ARGV[1])
local batch = cjson.decode(ARGV[2])
local window = tonumber(ARGV[3])
local meta, ids = KEYS[1], KEYS[2]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local floors = {}
local function floor_of(ci)
    local f = floors[ci]
    if f == nil then
        f = tonumber(redis.call('HGET', meta, 'floor:' .. classes[ci]) or '0')
        floors[ci] = f
    end
    return f
end

-- Decide a write of an event (received at seq, upstream version or -1, its own stamp
-- ev_stamp) against the field's stamp. Returns (true, stamp to store) to write, (false, stamp
-- to store) to refuse but raise a covering stamp's version, (false, nil) to refuse.
local function decide(stamp, ev_stamp, seq, version, floor)
    local sseq, sver, covering = floor, -1, true
    if stamp then
        local s, v, plus = string.match(stamp, '^(%d+):?(%d*)(%+?)$')
        sseq, sver, covering = tonumber(s) or 0, tonumber(v) or -1, plus == '+' or v == ''
    end
    if not covering then
        if version >= 0 and version > sver then
            return true, string.format('%d:%d', math.max(seq, sseq), version)
        elseif version < 0 and seq > math.max(sseq, floor) then
            return true, ev_stamp
        end
        return false, nil
    end
    if seq > math.max(sseq, floor) and (version < 0 or version > sver) then
        return true, ev_stamp
    elseif version > sver then
        return false, string.format('%d:%d+', sseq, version)
    end
    return false, nil
end

local pending = KEYS[#KEYS - 1]
local function advance_upstream(stream, useq, prev)
    local field = 'upstream-seq:' .. stream
    local cur = tonumber(redis.call('HGET', meta, field) or '-1')
    if prev >= 0 and cur < prev then
        redis.call('HSET', pending, stream .. ':' .. prev, useq)
        redis.call('PEXPIRE', pending, tonumber(ARGV[5]))
        return
    end
    local top = math.max(cur, useq)
    local nxt = redis.call('HGET', pending, stream .. ':' .. top)
    while nxt do
        redis.call('HDEL', pending, stream .. ':' .. top)
        top = math.max(top, tonumber(nxt))
        nxt = redis.call('HGET', pending, stream .. ':' .. top)
    end
    if top > cur then
        redis.call('HSET', meta, field, top)
    end
end

-- Access fields (what a permission check reads): a notification saying none was written lets
-- readers keep their users and roles (consumer/read/near_cache.py).
local ACCESS = {['roles'] = true, ['user-status'] = true, ['user-roles'] = true}
local written, access, stale, duplicates, touched = 0, 0, 0, 0, false
for _, ev in ipairs(batch) do
    if ev[8] then
        advance_upstream(ev[8], ev[9], ev[10])
    end
    local stamp, seq, version, event_id = ev[1], ev[2], ev[3], ev[4]
    if event_id ~= '' and redis.call('ZSCORE', ids, event_id) then
        duplicates = duplicates + 1
    else
        for _, w in ipairs(ev[5]) do
            local ci, field, value = w[1], w[2], w[3]
            local values, stamps = KEYS[1 + 2 * ci], KEYS[2 + 2 * ci]
            local current = redis.call('HGET', stamps, field)
            local write, new_stamp = decide(current, stamp, seq, version, floor_of(ci))
            if write then
                if value == false then
                    redis.call('HDEL', values, field)
                else
                    redis.call('HSET', values, field, value)
                end
                written = written + 1
                if ACCESS[classes[ci]] then
                    access = access + 1
                end
            else
                stale = stale + 1
            end
            if new_stamp then
                redis.call('HSET', stamps, field, new_stamp)
            end
        end
        for _, ki in ipairs(ev[6]) do
            redis.call('DEL', KEYS[ki])
            touched = true
        end
        for _, d in ipairs(ev[7]) do
            if redis.call('EXISTS', KEYS[d[1]]) == 1 then
                redis.call('INCRBYFLOAT', KEYS[d[1]], d[2])
                touched = true
            end
        end
        if event_id ~= '' then
            redis.call('ZADD', ids, now, event_id)
        end
    end
end

redis.call('ZREMRANGEBYSCORE', ids, '-inf', now - window)
redis.call('HSET', meta, 'last-event-ms', now)
local version = tonumber(redis.call('HGET', meta, 'version') or '0')
if written > 0 or touched then
    version = redis.call('HINCRBY', meta, 'version', 1)
    local notice = {version = version, written = written, access = access}
    redis.call('PUBLISH', ARGV[4], cjson.encode(notice))
end
-- The batch record (consumer/ingest/inflight.py): one ZADD, and trimming what outlived ARGV[5].
local applied, lifetime = KEYS[#KEYS], tonumber(ARGV[5])
local top = 0
for _, ev in ipairs(batch) do
    top = math.max(top, ev[2])
end
redis.call('ZADD', applied, now, string.format('%d', top))
redis.call('ZREMRANGEBYSCORE', applied, '-inf', now - lifetime)
redis.call('PEXPIRE', applied, lifetime)

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
    epoch = string.format('w%s-%s', t[1], t[2])
    redis.call('HSETNX', meta, 'epoch', epoch)
end
return {written, stale, duplicates, version, epoch}
