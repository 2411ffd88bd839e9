-- Renew the symbol lease if it is still the caller's: the compare and the
-- PEXPIRE in one atomic step, so a lease lost to another holder is never
-- extended. lease_held() comes from lease.lua.
--
-- KEYS[1]  symbol lease                      (quantum:apply:lease:{symbol})
-- ARGV[1]  the caller's token   ARGV[2] lease length in ms
--
-- Reply: 1 if renewed, 0 if the lease is no longer the caller's.

if lease_held(KEYS[1], ARGV[1]) then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
