-- Take the symbol lease, in one atomic step that also refuses when the plan
-- already has its result (another instance finished it while we waited) or,
-- for a new order, when the kill switch is on: one round trip on the hot path.
--
-- kill_on() comes from kill_switch.lua and lease_held() from lease.lua, which
-- Python prepends.
--
-- KEYS[1]  symbol lease                      (quantum:apply:lease:{symbol})
-- KEYS[2]  journal hash of the plan          (quantum:apply:journal:{id})
-- KEYS[3]  kill switch key                   (quantum:global:kill_switch)
-- KEYS[4]  kill switch key                   (quantum:kill)
--
-- ARGV[1] token   ARGV[2] lease length in ms
-- ARGV[3] kill switch from the environment (1 = on)
-- ARGV[4] check the kill switch (1 = a new order; 0 = a lookup of one that may be out)
--
-- Reply: OK (the lease is ours), BUSY (another holder has it), FINAL (the
-- plan's result is out), KILL (the kill switch is on), WRONGTYPE (the lease
-- key holds another Redis type).

if redis.call('HEXISTS', KEYS[2], 'result_id') == 1 then
  -- The result out stands, and the journal's state says so (as publish.lua keeps
  -- it): a gate that ran for a copy of the plan redelivered after Redis lost writes,
  -- while its result was written again, may have written 'permitted' over it.
  local was = redis.call('HGET', KEYS[2], 'outcome_status') or ''
  if was ~= '' and redis.call('HGET', KEYS[2], 'state') ~= string.lower(was) then
    redis.call('HSET', KEYS[2], 'state', string.lower(was))
  end
  return 'FINAL'
end
if ARGV[4] == '1' and (ARGV[3] == '1' or kill_on(KEYS[3]) or kill_on(KEYS[4])) then
  return 'KILL'
end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' then return 'WRONGTYPE' end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'OK' end
-- Ours already: this is a resend whose first reply was lost.
if lease_held(KEYS[1], ARGV[1]) then return 'OK' end
return 'BUSY'
