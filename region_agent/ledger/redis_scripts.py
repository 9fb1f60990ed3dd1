"""The Lua scripts of the Redis ledger (see `region_agent.ledger.redis` for the key layout).

Each is one atomic step over all its keys. Amounts go back to Redis through string.format('%d'):
Lua numbers are doubles, and tostring() would print a large amount in floating point.

Lua numbers are exact up to 2^53 only, and the cumulative counters (granted, returned, deducted,
refunded) may pass it. So Lua never computes with a counter: each changes only by HINCRBY (exact
int64 arithmetic in Redis), decisions read the `available` field (a balance, bounded by the
budget, hence exact), and what goes back to the agent is read as a string.
"""

from quota_common.validation import COUNTER_CEILING_DIGITS
from region_agent.ledger.script_link import LuaScript

# Every script's KEYS[1] is the incarnation hash (life, sequence) and ARGV[1] "life|floor": the
# life the agent is in and the highest sequence it has seen. A Redis that lost all its data
# (flushed, restarted empty) no longer has the life; one that lost only recent writes (restarted
# from an older snapshot, failed over to a lagging replica) has a sequence below what an agent
# saw. Either way the script changes nothing, and the region's agents move to a new life whose
# data keys start empty.
_SAME_LIFE = """
local life, floor = string.match(ARGV[1], '^(.*)|(%d+)$')
if redis.call('HGET', KEYS[1], 'life') ~= life then return {'lost'} end
if (tonumber(redis.call('HGET', KEYS[1], 'sequence')) or 0) < tonumber(floor) then return {'rolled_back'} end
local sequence = redis.call('HINCRBY', KEYS[1], 'sequence', 1)
local function body()
"""

# Closes _SAME_LIFE: the answer's last element is the sequence number this call reached.
_END = """
end
local answer = body()
table.insert(answer, sequence)
return answer
"""

_BALANCE = """
local function available(key)
  local stored = redis.call('HGET', key, 'available')
  if stored then return tonumber(stored) end
  if redis.call('EXISTS', key) == 0 then return 0 end
  -- A balance written before this field existed: derived once, in Redis's integer arithmetic.
  redis.call('HSET', key, 'available', 0)
  for _, term in ipairs({{'granted', ''}, {'returned', '-'}, {'deducted', '-'}, {'refunded', ''}, {'held', '-'}}) do
    local value = redis.call('HGET', key, term[1])
    if value and value ~= '0' then redis.call('HINCRBY', key, 'available', term[2] .. value) end
  end
  return tonumber(redis.call('HGET', key, 'available'))
end
-- Deltas are decimal strings: a Lua number would reach Redis in floating point. Call available(key) first
-- in the same script (it derives the field of a balance written before it existed); deductions already have.
local function move(key, field, delta, available_delta)
  redis.call('HINCRBY', key, field, delta)
  redis.call('HINCRBY', key, 'available', available_delta)
end
-- Exact whatever the counter's size: one of more than DIGITS digits is at least COUNTER_CEILING = 10^DIGITS.
local function at_ceiling(key, counter)
  local value = redis.call('HGET', key, counter)
  return value and #value > DIGITS
end
""".replace("DIGITS", str(COUNTER_CEILING_DIGITS))

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Many orders in one call, each checked and applied in turn as if alone (a batch is the orders
# that arrived while the previous call was on its way; one round trip and one AOF write serve them).
# KEYS: incarnation, reservations, then per order: its order key, balance per line, user per line.
# ARGV: incarnation, retention in ms, then per order: line count n, lines JSON, amount per line,
# unit limit per line, order limit per line, order key, hold in ms (0: a plain deduction), placer
# (the caller's identity, '' for none: recorded with a new order, and a retry must come from it).
# Answers one reply per order: 'ok' (expires, then available after, per line), 'short' or
# 'over_limit' (then the 1-based lines), 'at_ceiling' (the first line whose deducted is), 'replay'
# (same lines?, reserved?, expires), or 'denied' (another placer's order: nothing more is said of it).
DEDUCT = LuaScript(
    _SAME_LIFE
    + _BALANCE
    + _NOW_MS
    + """
local function deduct(k, a)
  local order, lines, n = KEYS[k], ARGV[a + 1], tonumber(ARGV[a])
  local placer = ARGV[a + 3 * n + 4]
  local first = redis.call('HGET', order, 'lines')
  if first then
    if (redis.call('HGET', order, 'placer') or '') ~= placer then return {'denied'} end
    local reserved = redis.call('HEXISTS', order, 'state')
    return {'replay', first == lines and 1 or 0, reserved, redis.call('HGET', order, 'expires') or '0'}
  end
  local order_key, hold = ARGV[a + 3 * n + 2], tonumber(ARGV[a + 3 * n + 3])
  local wanted, units, short, over = {}, {}, {}, {}
  for i = 1, n do
    local balance, user, amount = KEYS[k + i], KEYS[k + n + i], tonumber(ARGV[a + 1 + i])
    wanted[balance] = (wanted[balance] or 0) + amount
    units[user] = (units[user] or 0) + amount
  end
  for i = 1, n do
    -- A reservation too: its confirm will add to deducted.
    if at_ceiling(KEYS[k + i], 'deducted') then return {'at_ceiling', i} end
  end
  for i = 1, n do
    local user = KEYS[k + n + i]
    local unit_limit, order_limit = tonumber(ARGV[a + 1 + n + i]), tonumber(ARGV[a + 1 + 2 * n + i])
    local held = tonumber(redis.call('HGET', user, 'units')) or 0
    local orders = tonumber(redis.call('HGET', user, 'orders')) or 0
    if (unit_limit > 0 and held + units[user] > unit_limit) or (order_limit > 0 and orders + 1 > order_limit) then
      table.insert(over, i)
    end
  end
  if #over > 0 then return {'over_limit', unpack(over)} end
  for i = 1, n do
    if available(KEYS[k + i]) < wanted[KEYS[k + i]] then table.insert(short, i) end
  end
  if #short > 0 then return {'short', unpack(short)} end
  local field = hold > 0 and 'held' or 'deducted'
  for i = 1, n do move(KEYS[k + i], field, ARGV[a + 1 + i], '-' .. ARGV[a + 1 + i]) end
  for user, amount in pairs(units) do
    redis.call('HINCRBY', user, 'units', amount)
    redis.call('HINCRBY', user, 'orders', 1)
  end
  local expires = 0
  if hold > 0 then
    expires = now_ms() + hold
    redis.call('HSET', order, 'state', 'reserved', 'expires', string.format('%d', expires))
    redis.call('ZADD', KEYS[2], expires, order_key)
  end
  local answer = {'ok', string.format('%d', expires)}
  for i = 1, n do table.insert(answer, redis.call('HGET', KEYS[k + i], 'available')) end
  redis.call('HSET', order, 'lines', lines)
  -- Absent is '': orders placed without an identity (and before placers were recorded) cost no field.
  if placer ~= '' then redis.call('HSET', order, 'placer', placer) end
  -- A pending reservation's record stays until it is settled, however late the sweep: its held quota
  -- would never come back without it. The retention period starts when it ends.
  if hold == 0 then redis.call('PEXPIRE', order, ARGV[2]) end
  return answer
end
local answers, k, a = {}, 3, 3
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  table.insert(answers, deduct(k, a))
  k, a = k + 1 + 2 * n, a + 5 + 3 * n
end
return answers
"""
    + _END
)

# KEYS: incarnation, order, reservations, balance per line of the order, user per line.
# ARGV: incarnation, what to do (confirm, cancel, or expire: release only if past the deadline),
# order key, retention in ms, placer (who asks to confirm or cancel; expiry asks nobody's leave).
# Answers 'done' when this call changed the reservation, else 'was' and its state; 'denied' to a placer
# other than the order's, having changed nothing.
SETTLE = LuaScript(
    _SAME_LIFE
    + _BALANCE
    + _NOW_MS
    + """
local raw = redis.call('HGET', KEYS[2], 'lines')
if not raw then return {'not_found'} end
local action = ARGV[2]
if action ~= 'expire' and (redis.call('HGET', KEYS[2], 'placer') or '') ~= ARGV[5] then return {'denied'} end
local state = redis.call('HGET', KEYS[2], 'state') or 'deducted'
local expires = redis.call('HGET', KEYS[2], 'expires') or '0'
local lines = cjson.decode(raw)
local n = #lines
local function release(to)
  local users = {}
  for i, line in ipairs(lines) do
    local amount = string.format('%d', line[2])
    available(KEYS[3 + i])
    move(KEYS[3 + i], 'held', '-' .. amount, amount)
    redis.call('HINCRBY', KEYS[3 + n + i], 'units', '-' .. amount)
    users[KEYS[3 + n + i]] = true
  end
  for user in pairs(users) do redis.call('HINCRBY', user, 'orders', -1) end
  redis.call('HSET', KEYS[2], 'state', to)
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return to
end
if state == 'reserved' and tonumber(expires) <= now_ms() then
  state = release('expired')
  if action == 'expire' then return {'done', state, expires} end
end
if state ~= 'reserved' or action == 'expire' then return {'was', state, expires} end
if action == 'cancel' then
  release('cancelled')
else
  for i, line in ipairs(lines) do
    if at_ceiling(KEYS[3 + i], 'deducted') then return {'at_ceiling', line[1]} end
  end
  for i, line in ipairs(lines) do
    local amount = string.format('%d', line[2])
    redis.call('HINCRBY', KEYS[3 + i], 'held', '-' .. amount)
    redis.call('HINCRBY', KEYS[3 + i], 'deducted', amount)
  end
  redis.call('HSET', KEYS[2], 'state', 'confirmed')
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {'done', state, expires}
"""
    + _END
)

# KEYS: incarnation, order. ARGV: "life|floor" as every script's. Reads only: it takes no sequence number and
# writes nothing, so a read of a reservation neither extends nor releases it (one past its deadline reads
# 'expired', as settling it would make it). Answers 'lost' or 'rolled_back' as _SAME_LIFE would, 'none' for
# an order key this life does not hold, else 'order', its lines (JSON), placer ('' for none), state, deadline,
# and what was refunded per line of it.
ORDER = LuaScript(
    _NOW_MS
    + """
local life, floor = string.match(ARGV[1], '^(.*)|(%d+)$')
if redis.call('HGET', KEYS[1], 'life') ~= life then return {'lost'} end
if (tonumber(redis.call('HGET', KEYS[1], 'sequence')) or 0) < tonumber(floor) then return {'rolled_back'} end
local raw = redis.call('HGET', KEYS[2], 'lines')
if not raw then return {'none'} end
local refunded = {}
for _, line in ipairs(cjson.decode(raw)) do
  table.insert(refunded, redis.call('HGET', KEYS[2], 'refunded:' .. line[1]) or '0')
end
local state = redis.call('HGET', KEYS[2], 'state') or 'deducted'
local expires = redis.call('HGET', KEYS[2], 'expires') or '0'
if state == 'reserved' and tonumber(expires) <= now_ms() then state = 'expired' end
return {'order', raw, redis.call('HGET', KEYS[2], 'placer') or '', state, expires, refunded}
"""
)

# KEYS: reservations. ARGV: at most this many. Order keys of reservations past their deadline.
DUE = LuaScript(
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: incarnation, order, refund record, balance per line of the order, user per line.
# ARGV: incarnation, JSON of wanted [[promotion, amount]...] or '' for everything left, retention in ms,
# placer (who asks). A refund keeps the order for the retention period from then, so the order, and the
# placer it names, outlives the refund's record, and a refund's retry is checked against it too.
REFUND = LuaScript(
    _SAME_LIFE
    + _BALANCE
    + """
local raw = redis.call('HGET', KEYS[2], 'lines')
if raw and (redis.call('HGET', KEYS[2], 'placer') or '') ~= ARGV[4] then return {'denied'} end
local first = redis.call('GET', KEYS[3])
if first then
  local asked, answer = string.match(first, '^(.-)\\n(.*)$')
  if asked ~= ARGV[2] then return {'other_lines'} end
  return {'replay', answer}
end
if not raw then return {'not_found'} end
local state = redis.call('HGET', KEYS[2], 'state')
if state and state ~= 'confirmed' then return {'unconfirmed', state} end
local lines = cjson.decode(raw)
local left, spent, balance, user = {}, {}, {}, {}
for i, line in ipairs(lines) do
  local promotion = line[1]
  local refunded = tonumber(redis.call('HGET', KEYS[2], 'refunded:' .. promotion)) or 0
  spent[promotion] = (spent[promotion] or 0) + line[2]
  left[promotion] = spent[promotion] - refunded
  balance[promotion] = KEYS[3 + i]
  user[promotion] = KEYS[3 + #lines + i]
end
local wanted = {}
if ARGV[2] == '' then
  for _, line in ipairs(lines) do
    local promotion = line[1]
    if left[promotion] > 0 and not wanted[promotion] then
      wanted[promotion] = left[promotion]
      table.insert(wanted, promotion)
    end
  end
else
  for _, pair in ipairs(cjson.decode(ARGV[2])) do
    local promotion, amount = pair[1], pair[2]
    if left[promotion] == nil then return {'not_in_order', promotion} end
    if amount > left[promotion] then return {'too_much', promotion, string.format('%d', left[promotion])} end
    wanted[promotion] = amount
    table.insert(wanted, promotion)
  end
end
for _, promotion in ipairs(wanted) do
  if at_ceiling(balance[promotion], 'refunded') then return {'at_ceiling', promotion} end
end
local answer = {}
for _, promotion in ipairs(wanted) do
  local amount = string.format('%d', wanted[promotion])
  local refunded = redis.call('HINCRBY', KEYS[2], 'refunded:' .. promotion, amount)
  available(balance[promotion])
  move(balance[promotion], 'refunded', amount, amount)
  redis.call('HINCRBY', user[promotion], 'units', -wanted[promotion])
  if refunded == spent[promotion] then redis.call('HINCRBY', user[promotion], 'orders', -1) end
  -- cjson would print large amounts in floating point; integers are written out whole.
  table.insert(answer, '[' .. cjson.encode(promotion) .. ',' .. amount .. ']')
end
local encoded = '[' .. table.concat(answer, ',') .. ']'
-- The request is kept with the answer: a refund id retried with other lines is an error, not a replay.
redis.call('SET', KEYS[3], ARGV[2] .. '\\n' .. encoded, 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'ok', encoded}
"""
    + _END
)

# KEYS: incarnation, grants, balance, promotions. ARGV: incarnation, grant id, promotion, amount.
APPLY_GRANT = LuaScript(
    _SAME_LIFE
    + _BALANCE
    + """
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return {'applied_before'} end
if at_ceiling(KEYS[3], 'granted') then return {'at_ceiling'} end
redis.call('SADD', KEYS[2], ARGV[2])
available(KEYS[3])
move(KEYS[3], 'granted', ARGV[4], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[3])
return {'ok'}
"""
    + _END
)

# KEYS: incarnation, balance. ARGV: incarnation, amount.
RETURN_QUOTA = LuaScript(
    _SAME_LIFE
    + _BALANCE
    + """
local taken = math.min(tonumber(ARGV[2]), available(KEYS[2]))
if taken <= 0 then return {'ok', 0} end
if at_ceiling(KEYS[2], 'returned') then return {'at_ceiling'} end
taken = string.format('%d', taken)
move(KEYS[2], 'returned', taken, '-' .. taken)
return {'ok', taken}
"""
    + _END
)


# KEYS: incarnation. ARGV: life. Ends the life if it is still the current one.
FORGET = LuaScript(
    """
if redis.call('HGET', KEYS[1], 'life') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)

# KEYS: claim. ARGV: holder. Deletes the claim only if this holder still has it.
RELEASE = LuaScript(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)
