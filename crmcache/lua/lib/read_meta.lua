-- lib/read_meta.lua: the tenant meta a critical read answers with (read_cost.lua,
-- read_access.lua). Included by `--@include read_meta` (crmcache/keyspace.py, lua_source).

-- The tenant's (version, ready, epoch, upstream seq) from its meta hash `meta_key`: version '0'
-- when none, ready "1" or false; `new_epoch` is stored (HSETNX) when meta has no epoch yet,
-- so that the first reader of a tenant creates it; the upstream seq is the meta field
-- `upstream_field` (upstream-seq:<stream>), false when that is ''.
local function read_meta(meta_key, new_epoch, upstream_field)
    local meta = redis.call('HMGET', meta_key, 'version', 'ready', 'epoch')
    local epoch = meta[3]
    if not epoch then
        epoch = new_epoch
        redis.call('HSETNX', meta_key, 'epoch', epoch)
    end
    local upstream = false
    if upstream_field ~= '' then
        upstream = redis.call('HGET', meta_key, upstream_field)
    end
    return meta[1] or '0', meta[2], epoch, upstream
end
