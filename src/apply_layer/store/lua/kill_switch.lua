-- The kill switch rule, shared by every script that must honour it (gate.lua,
-- lease_acquire.lua); prepended to them by Python (gate.KILL_SWITCH_LUA, lease.py).
-- A kill switch key is on when it is a string holding 1, true or on (any
-- case); a key of another type, or missing, is off. permits.kill_on is its
-- Python twin (tests/store/test_kill_switch.py holds the two together).
local function kill_on(key)
  if redis.call('TYPE', key)['ok'] ~= 'string' then return false end
  if redis.call('STRLEN', key) > 4 then return false end  -- never read a huge value
  local l = string.lower(redis.call('GET', key))
  return l == '1' or l == 'true' or l == 'on'
end
