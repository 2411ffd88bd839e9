-- Record one send attempt before it leaves (state submitting, the send time
-- appended to order.attempts), fenced, in one atomic step.
--
-- The fence and the record are one step: only while the caller still holds
-- the symbol lease and the plan is authorized is the attempt recorded, and
-- the executor sends only what was recorded. A holder paused past its lease
-- finds the fence closed and sends nothing. lease_held() comes from
-- lease.lua, which lease.py owns and Python prepends.
--
-- Two compare-and-sets let the executor read ahead of the lease (during the
-- permit wait) and still send only on what is true now:
-- * the attempts the caller last saw: another instance that recorded an
--   attempt since (after the caller's order lookup) refuses this record;
-- * the symbol's last send the caller's position read followed: another
--   order recorded on the symbol since (the position may have moved) refuses
--   it too. Every record moves that mark.
--
-- KEYS[1]  journal hash of the plan          (quantum:apply:journal:{id})
-- KEYS[2]  symbol lease                      (quantum:apply:lease:{symbol})
-- KEYS[3]  the symbol's last send            (quantum:apply:lease:{symbol}:last_send)
--
-- ARGV[1] send time (epoch ms)   ARGV[2] client order id   ARGV[3] quantity
-- ARGV[4] side   ARGV[5] lease token
-- ARGV[6] the attempts the caller last saw ("t1,t2", "" for none; "*": not checked)
-- ARGV[7] the last-send mark the caller's position read followed ("*": not checked)
-- ARGV[8] expiry of the last-send mark (s)
--
-- Reply: the attempts so far ("t1,t2,..."); an error reply "FENCED ..." when
-- the lease is not the caller's, "journal state is ..." when the plan is
-- neither permitted nor submitting, "ATTEMPTS_CHANGED ..." when the attempts are not
-- the ones the caller saw, "POSITION_MOVED ..." when another send was recorded on the
-- symbol since the caller's mark. Nothing is written unless the reply is the
-- attempts.

if not lease_held(KEYS[2], ARGV[5]) then
  return redis.error_reply('FENCED symbol lease not held by this caller')
end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'permitted' and state ~= 'submitting' then
  return redis.error_reply('journal state is ' .. tostring(state) .. ', not permitted')
end
local a = redis.call('HGET', KEYS[1], 'order.attempts')
if ARGV[6] ~= '*' and (a or '') ~= ARGV[6] then
  return redis.error_reply('ATTEMPTS_CHANGED attempts are now ' .. tostring(a) .. ', not ' .. ARGV[6])
end
if ARGV[7] ~= '*' and (redis.call('GET', KEYS[3]) or '') ~= ARGV[7] then
  return redis.error_reply('POSITION_MOVED another order was recorded on the symbol since')
end
a = a and (a .. ',' .. ARGV[1]) or ARGV[1]
redis.call('HSET', KEYS[1], 'state', 'submitting', 'order.attempts', a,
           'order.client_order_id', ARGV[2], 'order.quantity', ARGV[3], 'order.side', ARGV[4])
redis.call('SET', KEYS[3], KEYS[1] .. '@' .. ARGV[1], 'EX', ARGV[8])
return a
