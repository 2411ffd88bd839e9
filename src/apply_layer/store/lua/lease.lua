-- The symbol lease's token rules, for every script that fences on the lease
-- or releases it (lease_renew.lua, lease_release.lua, and the journal's
-- record_attempt.lua and publish.lua); prepended to them by Python
-- (lease.LEASE_LUA). lease.py owns the lease: these two functions are the
-- only place a script compares or deletes it.
--
-- The lease key holds the holder's token; it is ours exactly when it holds
-- our token. A key of another type makes GET fail, and the script with it.

-- The caller still holds the lease (the fence before a send is recorded).
local function lease_held(key, token)
  return redis.call('GET', key) == token
end

-- Delete the lease if it is the caller's; 1 if deleted, else 0.
local function lease_release(key, token)
  if redis.call('GET', key) == token then return redis.call('DEL', key) end
  return 0
end
