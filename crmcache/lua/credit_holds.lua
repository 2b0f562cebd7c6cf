-- credit_holds.lua: every transition of a credit hold (a reservation), atomically.
--
-- KEYS[1]  crm:{t}:balance:<userId>         string: available credits (decimal text)
-- KEYS[2]  crm:{t}:holds:<userId>           hash: open holdId -> JSON {amount, deadline,
--                                           operation, key, ref, createdAt}
-- KEYS[3]  crm:{t}:hold-deadlines:<userId>  zset: open holdId -> deadline (ms, Redis clock)
-- KEYS[4]  crm:{t}:hold-users               zset: userId -> earliest deadline of its open holds
-- KEYS[5]  crm:{t}:hold:<holdId>            hash: the hold's record (state, amounts, result)
-- KEYS[6]  crm:{t}:idempotency:<key>        hash: the reserving request's record
-- KEYS[7]  crm:{t}:credit-outbox            stream: commits the Wrapper has not acknowledged
-- KEYS[8]  crm:{t}:settle-scheduled         string: set while a settle task is queued
-- KEYS[9]  crm:{t}:meta                     hash: `version` is bumped when `available` moves
-- ARGV[1]  action: reserve | commit | void | status | sweep | balance
-- ARGV[2]  holdId ('' for sweep and balance)
-- ARGV[3]  userId
-- ARGV[4]  record TTL in ms (idempotency and closed-hold records)
-- ARGV[5]  change-notification channel (crm:<t>:changes)
-- reserve: ARGV[6] fingerprint, [7] amount (decimal text >= 0), [8] timeout ms,
--          [9] result ref the caller will write ('' if none), [10] operationCode,
--          [11] the client's idempotency key, [12] createdAt (ISO-8601)
-- commit:  ARGV[6] result ref, [7] deductionId (new), [8] outbox group,
--          [9] settle-scheduled TTL ms, [10] occurredAt (ISO-8601)
--
-- Guarantees, each within one atomic step:
-- * Deadlines are kept by Redis's clock. Every action first voids the user's open holds
--   whose deadline passed (the amount goes back to `available`), so a process that died
--   mid-work never keeps a hold, even if nobody else ever looks at it: the reconciler's
--   `sweep` of the users in `hold-users` does the same. Nothing relies on key TTLs, which
--   would lose the amount. A hold reserved with a result ref (a lead id the caller is about
--   to write elsewhere) is never voided by its deadline here: only the reconciler, which can
--   ask the other store whether that result exists, commits or voids it (`sweep` lists them).
-- * reserve: never below zero; the amount moves from `available` to the hold. A key already
--   used with the same fingerprint replays its first answer while that hold is open or was
--   committed, and reserves anew only if the hold was voided or expired (nothing happened);
--   another fingerprint is a conflict. {'held', available, deadline, before} |
--   {'replay', record, open 0/1} | {'conflict'} | {'insufficient', available} | {'no-balance'}.
-- * commit: an open hold leaves `held` for good, and one outbox entry (amount > 0) is
--   settled with the Wrapper exactly once in effect, like a deduction. Committing again with
--   the same result replays. {'committed', deductionId, enqueue 0/1} | {'replay', record} |
--   {'conflict'} (other result) | {'voided'} | {'expired'} | {'unknown'}.
-- * void: an open hold's amount returns to `available`; voiding again is a no-op.
--   {'voided', available} | {'replay'} | {'committed'} | {'unknown'}.
-- * status: {'status', record} (an open hold's record says held; a closed one its end).
-- * sweep: {'swept', holdId, ref, key, ...} of the holds past their deadline waiting on a
--   result (enough to commit or void them even once their record expired).
-- * balance: {'balance', available or false, {held amounts}}.
-- `available` changing bumps meta.version and publishes it with `written` 0, as a deduction
-- does, so readers drop the balances they hold.

--@include credits

local balance_key, holds, deadlines, hold_users = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local record_key, request_key, outbox, scheduled, meta = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local action, hold_id, user_id, record_ttl, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local available_moved = false

local function add_available(amount_text)
    if tonumber(amount_text) == 0 or redis.call('EXISTS', balance_key) == 0 then
        -- No cached balance: the Wrapper's (read through later) never saw the hold.
        return redis.call('GET', balance_key)
    end
    available_moved = true
    return redis.call('INCRBYFLOAT', balance_key, amount_text)
end

local function reindex_user()
    local first = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
    if #first == 0 then
        redis.call('ZREM', hold_users, user_id)
    else
        redis.call('ZADD', hold_users, first[2], user_id)
    end
end

local function close_open(id)
    redis.call('HDEL', holds, id)
    redis.call('ZREM', deadlines, id)
end

local function sweep()
    local waiting = {}
    local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now)
    for _, id in ipairs(due) do
        local raw = redis.call('HGET', holds, id)
        if not raw then
            redis.call('ZREM', deadlines, id)
        else
            local hold = cjson.decode(raw)
            if hold.ref == '' then
                add_available(hold.amount)
                close_open(id)
            else
                table.insert(waiting, id)
                table.insert(waiting, hold.ref)
                table.insert(waiting, hold.key)
            end
        end
    end
    reindex_user()
    return waiting
end

local function mark(key, ...)
    if redis.call('EXISTS', key) == 1 then
        redis.call('HSET', key, ...)
        redis.call('PEXPIRE', key, record_ttl)
    end
end

local function mark_request(...)
    -- Only while the request's record still names this hold (a key whose hold expired may
    -- have reserved anew since).
    if redis.call('HGET', request_key, 'holdId') == hold_id then
        mark(request_key, ...)
    end
end

local function reserve()
    local fingerprint, amount_text, timeout = ARGV[6], ARGV[7], tonumber(ARGV[8])
    local request = redis.call('HGETALL', request_key)
    if #request > 0 then
        local r = {}
        for i = 1, #request, 2 do r[request[i]] = request[i + 1] end
        if r.fingerprint ~= fingerprint or r.holdId == nil then
            return {'conflict'}
        end
        local open = redis.call('HEXISTS', holds, r.holdId)
        if open == 1 or r.state == 'committed' then
            return {'replay', request, open}
        end
        redis.call('DEL', request_key) -- voided or expired: nothing happened, reserve anew
    end
    local available, balance_text = take_credits(balance_key, amount_text)
    if not available then
        return balance_text -- why nothing was taken
    end
    if tonumber(amount_text) > 0 then
        available_moved = true
    end
    local deadline = now + timeout
    redis.call('HSET', holds, hold_id, cjson.encode({
        amount = amount_text, deadline = deadline, operation = ARGV[10], key = ARGV[11],
        ref = ARGV[9], createdAt = ARGV[12]}))
    redis.call('ZADD', deadlines, deadline, hold_id)
    reindex_user()
    local fields = {'holdId', hold_id, 'userId', user_id, 'operationCode', ARGV[10],
        'amount', amount_text, 'available', available, 'deadlineMs', deadline,
        'resultRef', ARGV[9], 'idempotencyKey', ARGV[11], 'createdAt', ARGV[12],
        'state', 'held'}
    redis.call('HSET', record_key, unpack(fields))
    redis.call('PEXPIRE', record_key, timeout + record_ttl)
    redis.call('HSET', request_key, 'fingerprint', fingerprint, unpack(fields))
    redis.call('PEXPIRE', request_key, timeout + record_ttl)
    return {'held', available, deadline, balance_text}
end

local function closed_state()
    local state = redis.call('HGET', record_key, 'state')
    if state == 'held' then
        state = 'expired' -- voided by its deadline in a sweep, which cannot reach the records
        mark(record_key, 'state', state)
        mark_request('state', state)
    end
    return state
end

-- The open hold `hold_id` (its JSON decoded), or nil and how it ended: 'committed', 'voided',
-- 'expired', or nil when nothing is known of it.
local function open_hold()
    local raw = redis.call('HGET', holds, hold_id)
    if raw then
        return cjson.decode(raw)
    end
    return nil, closed_state()
end

local function commit()
    local ref = ARGV[6]
    local hold, ended = open_hold()
    if ended == 'committed' then
        if redis.call('HGET', record_key, 'resultRef') ~= ref then
            return {'conflict'}
        end
        return {'replay', redis.call('HGETALL', record_key)}
    elseif not hold then
        return {ended or 'unknown'}
    end
    if hold.ref ~= '' and hold.ref ~= ref then
        return {'conflict'}
    end
    close_open(hold_id)
    reindex_user()
    local deduction_id, enqueue = ARGV[7], 0
    if tonumber(hold.amount) > 0 then
        local _
        _, enqueue = append_charge(outbox, ARGV[8], scheduled, ARGV[9],
            'deductionId', deduction_id, 'userId', user_id, 'operationCode', hold.operation,
            'amount', hold.amount, 'occurredAt', ARGV[10], 'idempotencyKey', hold.key,
            'leadId', ref, 'holdId', hold_id)
    end
    mark(record_key, 'state', 'committed', 'resultRef', ref, 'deductionId', deduction_id,
        'committedAt', ARGV[10])
    mark_request('state', 'committed', 'resultRef', ref, 'deductionId', deduction_id)
    return {'committed', deduction_id, enqueue}
end

local function void()
    local hold, ended = open_hold()
    if not hold then
        if not ended then
            return {'unknown'}
        end
        return {ended == 'committed' and 'committed' or 'replay'}
    end
    close_open(hold_id)
    reindex_user()
    local available = add_available(hold.amount)
    mark(record_key, 'state', 'voided')
    mark_request('state', 'voided')
    return {'voided', available or false}
end

local reply
local waiting = sweep()
if action == 'reserve' then
    reply = reserve()
elseif action == 'commit' then
    reply = commit()
elseif action == 'void' then
    reply = void()
elseif action == 'sweep' then
    reply = {'swept', unpack(waiting)}
elseif action == 'status' then
    if redis.call('HEXISTS', holds, hold_id) == 0 then
        closed_state()
    end
    reply = {'status', redis.call('HGETALL', record_key)}
elseif action == 'balance' then
    reply = {'balance', redis.call('GET', balance_key) or false,
        redis.call('HVALS', holds)}
else
    return redis.error_reply('unknown action ' .. tostring(action))
end
if available_moved then
    balances_changed(meta, channel)
end
return reply
