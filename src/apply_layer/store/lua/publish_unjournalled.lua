-- Publish a result for a stream entry that has no usable journal (no valid
-- plan id, or a key of the wrong type in the way), and acknowledge the entry,
-- in one atomic step.
--
-- Published only while the entry is still pending, and acknowledged in the
-- same step, so a resend after a lost reply publishes nothing twice.
--
-- KEYS[1]  result stream                     (quantum:stream:apply.result)
-- KEYS[2]  plan stream                       (quantum:stream:apply.plan)
--
-- ARGV[1] result stream MAXLEN   ARGV[2] consumer group   ARGV[3] entry id
-- ARGV[4..] the result's fields, name and value in turn
--
-- Reply: {result id, 1} when published; {'', 0} when the entry was no
-- longer pending (its result is out).

if #redis.call('XPENDING', KEYS[2], ARGV[2], ARGV[3], ARGV[3], 1) == 0 then return {'', 0} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return {id, 1}
