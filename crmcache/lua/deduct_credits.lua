-- deduct_credits.lua: charge a user once per idempotency key, atomically, never below zero.
--
-- KEYS[1]  crm:{t}:balance:<userId>     string: available credits (decimal text)
-- KEYS[2]  crm:{t}:idempotency:<key>    hash: the key's record (see below), expires
-- KEYS[3]  crm:{t}:credit-outbox        stream: deductions the Wrapper has not acknowledged
-- KEYS[4]  crm:{t}:settle-scheduled     string: set while a settle task is queued
-- KEYS[5]  crm:{t}:meta                 hash: `version` is bumped by a charge
-- ARGV[1]  request fingerprint (hex digest of what the client asked for)
-- ARGV[2]  amount: decimal text >= 0
-- ARGV[3]  deductionId (new, unique): the idempotency key the Wrapper is sent
-- ARGV[4]  idempotency record TTL in ms
-- ARGV[5]  userId
-- ARGV[6]  operationCode
-- ARGV[7]  occurredAt (ISO-8601)
-- ARGV[8]  the client's idempotency key (kept in the outbox entry for audit)
-- ARGV[9]  settle-scheduled TTL in ms
-- ARGV[10] outbox consumer group name
-- ARGV[11] change-notification channel (crm:<t>:changes)
--
-- Guarantees (README.md, "Credits: reservations and leads"): all or nothing, in one step:
-- * a key already recorded with the same fingerprint returns {'replay', <record>} and changes
--   nothing; with another fingerprint {'conflict'} and changes nothing;
-- * a balance not cached returns {'no-balance'}: the caller reads it through and retries;
-- * a balance below the amount returns {'insufficient', balance}: nothing charged or recorded
--   (so the same key may succeed after a top-up);
-- * otherwise the balance is decremented (never below 0), the deduction appended to the
--   outbox (amount > 0 only), the record kept for the TTL, and {'charged', remaining,
--   outbox entry id or '', 1 if the caller must enqueue settlement, meta version, epoch}
--   returned (the version and epoch, the charge's consistency token, are kept in the record
--   too, so a replay answers the same token);
-- * a charge (amount > 0) bumps meta.version and publishes it with `written` 0 (no critical
--   field changed), exactly like a batch of events that changed a balance: readers that keep
--   balances in their near-cache drop them, and keep their costs and permissions.

--@include credits

local balance_key, record_key, outbox, scheduled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local fingerprint, amount_text, deduction_id = ARGV[1], ARGV[2], ARGV[3]

local record = redis.call('HGETALL', record_key)
if #record > 0 then
    for i = 1, #record, 2 do
        if record[i] == 'fingerprint' then
            if record[i + 1] == fingerprint then
                return {'replay', record}
            end
            return {'conflict'}
        end
    end
    return {'conflict'}
end

local remaining, why_not = take_credits(balance_key, amount_text)
if not remaining then
    return why_not
end

local entry_id, enqueue = '', 0
local version = redis.call('HGET', KEYS[5], 'version') or '0'
if tonumber(amount_text) > 0 then
    entry_id, enqueue = append_charge(outbox, ARGV[10], scheduled, ARGV[9],
        'deductionId', deduction_id, 'userId', ARGV[5], 'operationCode', ARGV[6],
        'amount', amount_text, 'occurredAt', ARGV[7], 'idempotencyKey', ARGV[8])
    version = balances_changed(KEYS[5], ARGV[11])
end
local epoch = redis.call('HGET', KEYS[5], 'epoch')
if not epoch then
    local t = redis.call('TIME')
    epoch = string.format('w%s-%s', t[1], t[2])
    redis.call('HSET', KEYS[5], 'epoch', epoch)
end

redis.call('HSET', record_key,
    'fingerprint', fingerprint, 'deductionId', deduction_id,
    'userId', ARGV[5], 'operationCode', ARGV[6], 'amount', amount_text,
    'remaining', remaining, 'occurredAt', ARGV[7], 'version', version, 'epoch', epoch)
redis.call('PEXPIRE', record_key, ARGV[4])
return {'charged', remaining, entry_id, enqueue, version, epoch}
