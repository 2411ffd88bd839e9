-- Record one send attempt before it leaves (state submitting, the send time
-- appended to order.attempts), fenced, in one atomic step.
--
-- The fence and the record are one step: only while the caller still holds
-- the symbol lease and the plan is authorized is the attempt recorded, and
-- the executor sends only what was recorded. A holder paused past its lease
-- finds the fence closed and sends nothing. lease_held() comes from
-- lease.lua, which lease.py owns and Python prepends.
--
-- KEYS[1]  journal hash of the plan          (quantum:apply:journal:{id})
-- KEYS[2]  symbol lease                      (quantum:apply:lease:{symbol})
--
-- ARGV[1] send time (epoch ms)   ARGV[2] client order id   ARGV[3] quantity
-- ARGV[4] side   ARGV[5] lease token
--
-- Reply: the attempts so far ("t1,t2,..."); an error reply "FENCED ..." when
-- the lease is not the caller's, or "journal state is ..." when the plan is
-- neither permitted nor submitting.

if not lease_held(KEYS[2], ARGV[5]) then
  return redis.error_reply('FENCED symbol lease not held by this caller')
end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'permitted' and state ~= 'submitting' then
  return redis.error_reply('journal state is ' .. tostring(state) .. ', not permitted')
end
local a = redis.call('HGET', KEYS[1], 'order.attempts')
a = a and (a .. ',' .. ARGV[1]) or ARGV[1]
redis.call('HSET', KEYS[1], 'state', 'submitting', 'order.attempts', a,
           'order.client_order_id', ARGV[2], 'order.quantity', ARGV[3], 'order.side', ARGV[4])
return a
