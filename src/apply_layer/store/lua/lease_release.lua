-- Release the symbol lease if it is still the caller's (a lease taken over
-- by another holder after ours expired is left alone): the compare and the
-- delete in one atomic step. lease_release() comes from lease.lua.
--
-- KEYS[1]  symbol lease                      (quantum:apply:lease:{symbol})
-- ARGV[1]  the caller's token
--
-- Reply: 1 if released, 0 if the lease was not the caller's.

return lease_release(KEYS[1], ARGV[1])
