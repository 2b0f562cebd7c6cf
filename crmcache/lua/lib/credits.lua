-- lib/credits.lua: what a deduction (deduct_credits.lua) and a reservation or commit
-- (credit_holds.lua) do alike. Included by `--@include credits` (crmcache/keyspace.py,
-- lua_source): the functions take their keys as arguments and touch nothing else.

-- Take `amount_text` (decimal text >= 0) off the cached balance at `balance_key`, never below
-- zero. Returns the remaining balance and the balance before (both text), or nil and the reply
-- that says why nothing was taken: {'no-balance'} (not cached: the caller reads it through and
-- retries), {'insufficient', balance} or an error (a balance or amount that is not a number).
local function take_credits(balance_key, amount_text)
    local balance_text = redis.call('GET', balance_key)
    if not balance_text then
        return nil, {'no-balance'}
    end
    local balance, amount = tonumber(balance_text), tonumber(amount_text)
    if balance == nil then
        return nil, redis.error_reply('balance of ' .. balance_key .. ' is not a number')
    end
    if amount == nil or amount < 0 then
        return nil, redis.error_reply('amount must be a number >= 0')
    end
    if balance < amount then
        return nil, {'insufficient', balance_text}
    end
    local remaining = balance_text
    if amount > 0 then
        remaining = redis.call('INCRBYFLOAT', balance_key, '-' .. amount_text)
        if tonumber(remaining) < 0 then
            -- Only reachable through float rounding of equal decimals; never let it show.
            remaining = '0'
            redis.call('SET', balance_key, remaining)
        end
    end
    return remaining, balance_text
end

-- Append a charge to the tenant's credit outbox (stream `outbox`, its consumer group `group`
-- created with it) for settlement with the Wrapper; `...` are the entry's field/value pairs.
-- Returns the entry id and 1 when the caller must enqueue a settle task (the `scheduled` flag,
-- kept for `scheduled_ttl` ms, was not set yet), else 0.
local function append_charge(outbox, group, scheduled, scheduled_ttl, ...)
    if redis.call('EXISTS', outbox) == 0 then
        redis.call('XGROUP', 'CREATE', outbox, group, '0', 'MKSTREAM')
    end
    local entry_id = redis.call('XADD', outbox, '*', ...)
    if redis.call('SET', scheduled, '1', 'NX', 'PX', scheduled_ttl) then
        return entry_id, 1
    end
    return entry_id, 0
end

-- Bump the tenant's meta.version for a change of balances and publish it on `channel` with
-- `written` 0 (no critical field changed): readers drop the balances they keep, nothing else.
-- Returns the new version.
local function balances_changed(meta, channel)
    local version = redis.call('HINCRBY', meta, 'version', 1)
    redis.call('PUBLISH', channel, cjson.encode({version = version, written = 0}))
    return version
end
