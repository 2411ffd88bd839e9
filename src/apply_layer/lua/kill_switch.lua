-- The kill switch rule, shared by every script that must honour it (gate.lua,
-- the lease's acquire script); prepended to them by Python. Mirrors
-- permits.is_kill_value: a string key holding 1, true or on (any case).
local function kill_on(key)
  if redis.call('TYPE', key)['ok'] ~= 'string' then return false end
  local l = string.lower(redis.call('GET', key))
  return l == '1' or l == 'true' or l == 'on'
end
