-- lib/tokened.lua: the token of a read-through answer (ref_read.lua, ref_fill.lua,
-- balance_read.lua, balance_fill.lua). Included by `--@include tokened`
-- (crmcache/keyspace.py, lua_source).

-- A function that puts the tenant's epoch and version (from its meta hash `meta_key`, read
-- now) in front of a reply: every invalidation up to that version is applied, so the entry
-- read or written in this call is at least that fresh.
local function tokened(meta_key)
    local meta = redis.call('HMGET', meta_key, 'epoch', 'version')
    return function(reply)
        table.insert(reply, 1, meta[2])
        table.insert(reply, 1, meta[1])
        return reply
    end
end
