-- Claim a stream entry for its plan, in one atomic step.
--
-- The journal, once open, names the entry that drives the plan (it outlives
-- the claim key); before that the claim key (the daemon's own) decides who
-- opens it. Reading the journal, taking the claim and opening the journal in
-- one step means two instances handed the same plan can never both open it.
--
-- KEYS[1]  claim key                         (quantum:apply:claim:{id})
-- KEYS[2]  journal hash of the plan          (quantum:apply:journal:{id})
--
-- ARGV[1] entry id   ARGV[2] claim TTL in seconds   ARGV[3] now (epoch ms)
-- ARGV[4] journal TTL in seconds   ARGV[5] plan id   ARGV[6] symbol
-- ARGV[7] the entry's content (what it asks for: symbol, decision, close step, share)
--
-- Reply: {holder, state, result_id, outcome, wrong, content}. holder is the
-- entry id that drives the plan; state, result_id and outcome are the
-- journal's ('' if none). wrong names a key that holds another type ("journal"
-- or "claim"), which no command of ours could use (WRONGTYPE, every retry); ''
-- otherwise. content is what the driving entry asks for, as the journal
-- recorded it when that entry opened it ('' if unknown): a second entry that
-- asks for something else is a conflict, not a duplicate. Values are cut to 64
-- bytes (stream ids are at most 41), content to 160: they are logged.

local jt = redis.call('TYPE', KEYS[2])['ok']
if jt ~= 'none' and jt ~= 'hash' then return {'', '', '', '', 'journal', ''} end
local j = redis.call('HMGET', KEYS[2], 'state', 'result_id', 'stream_id', 'outcome_status',
                     'content')
if j[1] and not j[3] and not j[2] then
  -- An unfinished journal nobody claimed: the gate's write survived where the
  -- claim's was lost (Redis lost writes, or a split brain put them on two servers).
  -- This entry drives the plan now; otherwise every copy would be a duplicate of
  -- nobody, acknowledged without a result. (One with a result is left as it is:
  -- a copy of it is a duplicate, logged with that result's status.) The content
  -- the lost claim would have journalled is this entry's.
  redis.call('HSET', KEYS[2], 'stream_id', ARGV[1])
  j[3] = ARGV[1]
  if not j[5] then
    redis.call('HSET', KEYS[2], 'content', ARGV[7])
    j[5] = ARGV[7]
  end
end
if j[1] then
  return {string.sub(j[3] or '', 1, 64), string.sub(j[1], 1, 64), string.sub(j[2] or '', 1, 64),
          string.sub(j[4] or '', 1, 64), '', string.sub(j[5] or '', 1, 160)}
end
local ct = redis.call('TYPE', KEYS[1])['ok']
if ct ~= 'none' and ct ~= 'string' then return {'', '', '', '', 'claim', ''} end
local holder = ARGV[1]
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  holder = string.sub(redis.call('GET', KEYS[1]) or '', 1, 64)  -- logged: bounded
end
if holder ~= ARGV[1] then return {holder, '', '', '', '', ''} end
redis.call('HSET', KEYS[2], 'state', 'received', 'plan_id', ARGV[5], 'symbol', ARGV[6],
           'stream_id', ARGV[1], 'received_at_ms', ARGV[3], 'content', ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {holder, 'received', '', '', '', ARGV[7]}
