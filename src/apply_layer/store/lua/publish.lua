-- Publish a plan's one result, in one atomic step: XADD to the result stream,
-- the journal's final state, the symbol's cooldown; and with them the stream
-- entry's acknowledgement and the release of the symbol lease.
--
-- One step, so that "final" and "result published" can never disagree, and
-- "result out" and "entry done" can never be seen apart. A resend of this
-- script (after a lost reply) finds result_id and publishes nothing twice.
-- lease_release() comes from lease.lua, which lease.py owns and Python
-- prepends, with COOLDOWN_TTL_SEC from keys.py.
--
-- KEYS[1]  journal hash of the plan          (quantum:apply:journal:{id})
-- KEYS[2]  result stream                     (quantum:stream:apply.result)
-- KEYS[3]  cooldown key of the symbol        (quantum:cooldown:last_exec_ts:{symbol})
-- KEYS[4]  plan stream                       (quantum:stream:apply.plan)
-- KEYS[5]  symbol lease                      (quantum:apply:lease:{symbol})
--
-- ARGV[1] final state   ARGV[2] now (epoch ms)   ARGV[3] journal TTL in seconds
-- ARGV[4] set the cooldown (1/0)   ARGV[5] result stream MAXLEN
-- ARGV[6] result status   ARGV[7] result error   ARGV[8] consumer group
-- ARGV[9] entry id to acknowledge ('' = none)
-- ARGV[10] lease token ('' = no lease to release)
-- ARGV[11] unless sent (1 = publish nothing while an order may be out: state submitting)
-- ARGV[12..] the result's fields, name and value in turn
--
-- Reply: {result id, 1} when published now; {result id, 0, its status} when
-- it was out already (corrections.py may correct it); {'', -1} when refused
-- (unless sent, and the plan is submitting).

local function finish()
  if ARGV[9] ~= '' then redis.call('XACK', KEYS[4], ARGV[8], ARGV[9]) end
  if ARGV[10] ~= '' then lease_release(KEYS[5], ARGV[10]) end
end
local existing = redis.call('HGET', KEYS[1], 'result_id')
if existing then
  -- The result out stands, and the journal's state says so: a gate that ran for a
  -- copy of the plan redelivered after Redis lost writes may have written over it.
  local was = redis.call('HGET', KEYS[1], 'outcome_status') or ''
  if was ~= '' and redis.call('HGET', KEYS[1], 'state') ~= string.lower(was) then
    redis.call('HSET', KEYS[1], 'state', string.lower(was))
  end
  finish()
  return {existing, 0, was}
end
if ARGV[11] == '1' and redis.call('HGET', KEYS[1], 'state') == 'submitting' then
  return {'', -1}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 12))
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'result_id', id, 'final_at_ms', ARGV[2],
           'outcome_status', ARGV[6], 'outcome_error', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[2], 'EX', COOLDOWN_TTL_SEC) end
finish()
return {id, 1}
