-- The permit gate: decide and consume in one atomic step.
--
-- KEYS[1]  journal hash of the plan          (quantum:apply:journal:{id})
-- KEYS[2]  governor block marker             (quantum:governor:block:{id})
-- KEYS[3]  kill switch key                   (quantum:global:kill_switch)
-- KEYS[4]  kill switch key                   (quantum:kill)
-- KEYS[5..] one permit key per required issuer, in ARGV order
--
-- ARGV[1] plan_id   ARGV[2] symbol   ARGV[3] caller token   ARGV[4] now (epoch ms)
-- ARGV[5] final (1 = the deadline has passed: a missing permit blocks)
-- ARGV[6] kill switch from the environment (1 = on)
-- ARGV[7] journal TTL in seconds
-- ARGV[8..] issuer specs "name:q" (carries safe_qty) or "name:"
--
-- Reply: {"WAIT"} while a permit is missing and the deadline has not passed;
-- otherwise {status, owner, decided_at_ms, marker_raw, n, then per issuer
-- name, kind, raw, ttl, verdict, category}. status is ALLOW, DENY,
-- GOV_BLOCK, KILL or TIMEOUT. owner is 1 when the recorded decision was made
-- with this call's token: a resend after a lost reply gets the same answer,
-- and a racing caller learns the plan is already decided (owner 0).
--
-- The verdict rules mirror core/permits.py; keep the two in step. kill_on() comes
-- from kill_switch.lua, and MAX_PERMIT_BYTES, MAX_PERMIT_FIELDS,
-- MAX_PERMIT_MEMORY and OVERSIZED_PREFIX from core/permits.py, which Python prepends.
--
-- No permit may stall Redis (issue 21): a size is asked before anything is
-- read (STRLEN; HLEN and MEMORY USAGE), what will be refused is never read
-- whole, and consumed permits are deleted with UNLINK (a big HASH is freed
-- by Redis' background thread, not in this script).

local journal = KEYS[1]
local plan_id, symbol, token = ARGV[1], ARGV[2], ARGV[3]
local now_ms, final, kill_env, ttl = ARGV[4], ARGV[5] == '1', ARGV[6] == '1', tonumber(ARGV[7])
local n = #ARGV - 7

-- A decision already recorded is returned as it was made: one plan, one decision.
local recorded = redis.call('HGET', journal, 'gate_status')
if recorded then
  local head = redis.call('HMGET', journal, 'gate_token', 'gate_at_ms', 'gate_marker')
  local reply = {recorded, head[1] == token and 1 or 0, head[2] or '0', head[3] or '', n}
  for i = 1, n do
    local name = string.match(ARGV[7 + i], '^([^:]*)')
    local p = 'p.' .. name .. '.'
    local f = redis.call('HMGET', journal, p .. 'kind', p .. 'raw', p .. 'ttl', p .. 'verdict', p .. 'category')
    reply[#reply + 1] = name
    reply[#reply + 1] = f[1] or 'none'
    reply[#reply + 1] = f[2] or ''
    reply[#reply + 1] = f[3] or '-2'
    reply[#reply + 1] = f[4] or 'missing'
    reply[#reply + 1] = f[5] or ''
  end
  return reply
end

local function is_true(v)
  if v == true or v == 1 then return true end
  if type(v) == 'string' then
    local l = string.lower(v)
    return l == 'true' or l == '1'
  end
  return false
end

local function qty_ok(q)
  if type(q) == 'string' then
    if not (string.match(q, '^%d+%.?%d*$') or string.match(q, '^%d+%.?%d*[eE][-+]?%d+$')) then
      return false
    end
    q = tonumber(q)
  end
  return type(q) == 'number' and q == q and q > 0 and q < math.huge
end

-- Returns verdict, category for one permit's decoded fields.
local function judge(obj, carries_qty)
  local g, a = obj['granted'], obj['allow']
  if g == nil and a == nil then return 'deny', 'not_granted' end
  if (g ~= nil and not is_true(g)) or (a ~= nil and not is_true(a)) then return 'deny', 'denied' end
  local s = obj['symbol']
  if s ~= nil and s ~= cjson.null and s ~= symbol then return 'deny', 'symbol_mismatch' end
  if carries_qty then
    local q = obj['safe_qty']
    if q == nil or q == cjson.null then q = obj['safe_close_qty'] end
    if not qty_ok(q) then return 'deny', 'invalid_qty' end
  end
  return 'allow', ''
end

-- Rule 0: a value past MAX_PERMIT_BYTES is journalled and returned as this
-- summary, never in full (an 8 MB permit must not cost 8 MB per plan), and
-- is never read in full either: no hash of the whole (a 400 MB string took
-- Redis 2.7 s to read and hash), only its size and at most its first 64 bytes.
local function summary(size, head)
  head = string.gsub(head, '[^%w_.-]', '_')
  return OVERSIZED_PREFIX .. size .. ':head=' .. head
end

local function is_summary(raw)
  return string.sub(raw, 1, #OVERSIZED_PREFIX) == OVERSIZED_PREFIX
end

-- A string key's value, or its summary when it is past the limit.
local function read_string(key)
  local len = redis.call('STRLEN', key)
  if len > MAX_PERMIT_BYTES then
    return summary('bytes=' .. len, redis.call('GETRANGE', key, 0, 63)), true
  end
  return redis.call('GET', key), false
end

-- Read and judge one permit key: kind, raw text, verdict, category.
local function read_permit(key, carries_qty)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return 'none', '', 'missing', '' end
  if kind == 'string' then
    local raw, oversized = read_string(key)
    if oversized or is_summary(raw) then return kind, raw, 'deny', 'oversized' end
    local ok, obj = pcall(cjson.decode, raw)
    if not ok then return kind, raw, 'deny', 'malformed' end
    if type(obj) == 'number' then obj = {allow = (obj == 1)} end
    if type(obj) ~= 'table' then return kind, raw, 'deny', 'malformed' end
    local v, c = judge(obj, carries_qty)
    return kind, raw, v, c
  end
  if kind == 'hash' then
    -- Sized before it is read: past MAX_PERMIT_FIELDS fields its JSON cannot fit
    -- in MAX_PERMIT_BYTES; past MAX_PERMIT_MEMORY bytes neither (a few huge
    -- values). Both bounds are loose enough that only such a hash is refused
    -- unread; the exact rule on its JSON follows.
    local count = redis.call('HLEN', key)
    local memory = 0
    if count <= MAX_PERMIT_FIELDS then
      memory = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', 0) or 0
    end
    if count > MAX_PERMIT_FIELDS or memory > MAX_PERMIT_MEMORY then
      return kind, summary('fields=' .. count .. ':memory=' .. memory, ''), 'deny', 'oversized'
    end
    local flat = redis.call('HGETALL', key)
    local obj = {}
    for i = 1, #flat, 2 do obj[flat[i]] = flat[i + 1] end
    local raw = cjson.encode(obj)
    if #raw > MAX_PERMIT_BYTES then
      return kind, summary('bytes=' .. #raw, string.sub(raw, 1, 64)), 'deny', 'oversized'
    end
    local v, c = judge(obj, carries_qty)
    return kind, raw, v, c
  end
  return kind, '', 'deny', 'wrong_type'
end

local status
if kill_env or kill_on(KEYS[3]) or kill_on(KEYS[4]) then status = 'KILL' end

local permits, any_deny, any_missing = {}, false, false
for i = 1, n do
  local name, q = string.match(ARGV[7 + i], '^([^:]*):(.*)$')
  local key = KEYS[4 + i]
  local kind, raw, verdict, category = read_permit(key, q == 'q')
  permits[i] = {name = name, key = key, kind = kind, raw = raw, verdict = verdict,
                category = category, ttl = redis.call('TTL', key)}
  if verdict == 'deny' then any_deny = true end
  if verdict == 'missing' then any_missing = true end
end

local marker = ''
if not status and redis.call('TYPE', KEYS[2])['ok'] == 'string' then
  marker = read_string(KEYS[2])
  status = 'GOV_BLOCK'
end
if not status then
  if any_deny then status = 'DENY'
  elseif not any_missing then status = 'ALLOW'
  elseif final then status = 'TIMEOUT'
  else return {'WAIT'} end
end

-- Consume: all permits on ALLOW; whatever is present on a deny or a
-- governor block (a plan id is single-use); nothing on KILL or TIMEOUT.
local consume = status == 'ALLOW' or status == 'DENY' or status == 'GOV_BLOCK'
local fields = {
  'plan_id', plan_id, 'symbol', symbol,
  'state', status == 'ALLOW' and 'permitted' or 'blocked',
  'gate_status', status, 'gate_token', token, 'gate_at_ms', now_ms, 'gate_marker', marker,
}
local reply = {status, 1, now_ms, marker, n}
for _, p in ipairs(permits) do
  local consumed = '0'
  if consume and p.verdict ~= 'missing' then
    redis.call('UNLINK', p.key)
    consumed = '1'
  end
  local f = 'p.' .. p.name .. '.'
  for _, kv in ipairs({{'kind', p.kind}, {'raw', p.raw}, {'ttl', tostring(p.ttl)},
                       {'verdict', p.verdict}, {'category', p.category}, {'consumed', consumed}}) do
    fields[#fields + 1] = f .. kv[1]
    fields[#fields + 1] = kv[2]
  end
  for _, v in ipairs({p.name, p.kind, p.raw, tostring(p.ttl), p.verdict, p.category}) do
    reply[#reply + 1] = v
  end
end
redis.call('HSET', journal, unpack(fields))
redis.call('EXPIRE', journal, ttl)
return reply
