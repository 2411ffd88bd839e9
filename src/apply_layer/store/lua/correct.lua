-- Correct a published result that turned out wrong: the plan's order exists
-- (an executed result, with its real fill), but the result out says it did
-- not (BLOCKED, SKIPPED, REJECTED, FAILED), because Redis lost the record of
-- the order and another instance decided the plan afresh (corrections.py).
-- COOLDOWN_TTL_SEC comes from keys.py, prepended by Python (as for publish.lua).
--
-- One atomic step: the correcting result entry, the journal's final state
-- and the cooldown, only if the journal still holds the result being
-- corrected, so a resend (after a lost reply) or a second instance writes
-- nothing twice. An executed result is never corrected: only an order found
-- at the exchange is evidence, and "executed" already says so.
--
-- KEYS[1]  journal hash of the plan          (quantum:apply:journal:{id})
-- KEYS[2]  result stream                     (quantum:stream:apply.result)
-- KEYS[3]  cooldown key of the symbol        (quantum:cooldown:last_exec_ts:{symbol})
--
-- ARGV[1] the result id being corrected   ARGV[2] now (epoch ms)
-- ARGV[3] journal TTL in seconds   ARGV[4] result stream MAXLEN
-- ARGV[5..] the correcting result's fields, name and value in turn (an
--           executed result's; the script adds corrects, corrected_status
--           and corrected_error)
--
-- Reply: {result id, 1} when the correction was written now; {current
-- result id, 0} when there was nothing to correct.

local current = redis.call('HGET', KEYS[1], 'result_id')
if current ~= ARGV[1] then return {current or '', 0} end
local status = redis.call('HGET', KEYS[1], 'outcome_status') or ''
if status == 'EXECUTED' then return {current, 0} end
local was_error = redis.call('HGET', KEYS[1], 'outcome_error') or ''
local fields = {unpack(ARGV, 5)}
for _, v in ipairs({'corrects', current, 'corrected_status', status,
                    'corrected_error', was_error}) do
  fields[#fields + 1] = v
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
redis.call('HSET', KEYS[1], 'state', 'executed', 'result_id', id, 'final_at_ms', ARGV[2],
           'outcome_status', 'EXECUTED', 'outcome_error', '',
           'corrected_result_id', current, 'corrected_status', status,
           'corrected_error', was_error)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[3], ARGV[2], 'EX', COOLDOWN_TTL_SEC)
return {id, 1}
