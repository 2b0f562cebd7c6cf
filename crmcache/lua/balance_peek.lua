-- balance_peek.lua: a user's cached balance with the meta version and epoch it was read at,
-- so that a near-cache can hold it exactly as long as the version stays (every charge and
-- every top-up bumps it). Reads only: a balance not cached is read through elsewhere
-- (balance_read.lua, with its lease).
--
-- KEYS[1]  crm:{t}:balance:<userId>   string: available credits (decimal text)
-- KEYS[2]  crm:{t}:meta               hash: version, epoch
-- Returns {balance or false, version (0 when none), epoch or false}.

return {
    redis.call('GET', KEYS[1]),
    redis.call('HGET', KEYS[2], 'version') or '0',
    redis.call('HGET', KEYS[2], 'epoch'),
}
