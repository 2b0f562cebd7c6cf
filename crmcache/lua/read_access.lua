-- read_access.lua: everything a permission check needs for one user, in one round trip.
--
-- KEYS[1]  crm:{t}:meta         hash: version, ready, epoch
-- KEYS[2]  crm:{t}:user-status  hash: userId -> status
-- KEYS[3]  crm:{t}:user-roles   hash: userId -> JSON list of roleIds
-- KEYS[4]  crm:{t}:roles        hash: roleId -> JSON list of permissions
-- ARGV[1]  userId
-- ARGV[2]  a random epoch, stored if meta has none yet (see read_cost.lua)
-- ARGV[3]  a meta field upstream-seq:<stream> to return with the data, or ''
--
-- Guarantees: status, roles and permissions are read at one instant together with the
-- (epoch, version) they belong to (see read_cost.lua). A role list that is not valid JSON
-- yields no roles (the caller denies).
-- Returns {version, ready, epoch, status or nil, roles JSON or nil, upstream seq or nil,
-- roleId1, perms1, ...};
-- the role pairs are present only for an active user.

--@include read_meta

local version, ready, epoch, upstream = read_meta(KEYS[1], ARGV[2], ARGV[3])
local status = redis.call('HGET', KEYS[2], ARGV[1])
local roles_json = redis.call('HGET', KEYS[3], ARGV[1])
local out = {version, ready, epoch, status, roles_json, upstream}
if status ~= 'active' or not roles_json then
    return out
end
local ok, roles = pcall(cjson.decode, roles_json)
if not ok or type(roles) ~= 'table' then
    return out
end
local ids = {}
for _, role in ipairs(roles) do
    if type(role) == 'string' then
        ids[#ids + 1] = role
    end
end
if #ids == 0 then
    return out
end
local perms = redis.call('HMGET', KEYS[4], unpack(ids))
for i, role in ipairs(ids) do
    out[#out + 1] = role
    out[#out + 1] = perms[i]
end
return out
