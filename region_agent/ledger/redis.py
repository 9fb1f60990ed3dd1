"""The regional ledger in the region's Redis, shared by all of the region's agents.

Every operation is one Lua script (EVALSHA, reloaded on NOSCRIPT by redis-py), so it is
atomic across all its keys and all agent processes. All keys of a region share the hash
tag `{quota:<region>}`, so a multi-line order touching several promotions runs in one slot
on Redis Cluster too. Layout:

    {quota:R}:incarnation            this ledger's life; a Redis that lost its data gets a new one
    {quota:R}:promotions             set of promotion ids with a balance
    {quota:R}:balance:<promotion>    hash granted, returned, deducted, refunded
    {quota:R}:grants                 set of applied grant ids
    {quota:R}:order:<order key>      hash lines (JSON, the first answer) and refunded:<promotion>
    {quota:R}:refund:<order>:<id>    the first answer of a refund (JSON)
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as redis

from quota_center.errors import FailedPrecondition, InvalidArgument, NotFound
from region_agent.ledger.base import Balance, DeductOutcome, Line, RefundOutcome

_AVAILABLE = """
local function available(key)
  local b = redis.call('HMGET', key, 'granted', 'returned', 'deducted', 'refunded')
  return (tonumber(b[1]) or 0) - (tonumber(b[2]) or 0) - (tonumber(b[3]) or 0) + (tonumber(b[4]) or 0)
end
"""

# KEYS: order, balance per line. ARGV: lines JSON, amount per line.
_DEDUCT = (
    _AVAILABLE
    + """
local first = redis.call('HGET', KEYS[1], 'lines')
if first then
  if first == ARGV[1] then return {'replay'} end
  return {'conflict'}
end
local wanted, short = {}, {}
for i = 2, #KEYS do wanted[KEYS[i]] = (wanted[KEYS[i]] or 0) + tonumber(ARGV[i]) end
for i = 2, #KEYS do
  if available(KEYS[i]) < wanted[KEYS[i]] then table.insert(short, i - 1) end
end
if #short > 0 then return {'short', unpack(short)} end
local left = {'ok'}
for i = 2, #KEYS do redis.call('HINCRBY', KEYS[i], 'deducted', ARGV[i]) end
for i = 2, #KEYS do table.insert(left, available(KEYS[i])) end
redis.call('HSET', KEYS[1], 'lines', ARGV[1])
return left
"""
)

# KEYS: order, refund record, balance per promotion of the order (in the order's line order).
# ARGV: JSON of wanted {promotion: amount}, or '' for everything left.
_REFUND = """
local first = redis.call('GET', KEYS[2])
if first then return {'replay', first} end
local raw = redis.call('HGET', KEYS[1], 'lines')
if not raw then return {'not_found'} end
local lines = cjson.decode(raw)
local left, balance = {}, {}
for i, line in ipairs(lines) do
  local promotion = line[1]
  local refunded = tonumber(redis.call('HGET', KEYS[1], 'refunded:' .. promotion)) or 0
  left[promotion] = (left[promotion] or 0) + line[2] - refunded
  balance[promotion] = KEYS[2 + i]
end
local wanted = {}
if ARGV[1] == '' then
  for _, line in ipairs(lines) do
    local promotion = line[1]
    if left[promotion] > 0 and not wanted[promotion] then
      wanted[promotion] = left[promotion]
      table.insert(wanted, promotion)
    end
  end
else
  for _, pair in ipairs(cjson.decode(ARGV[1])) do
    local promotion, amount = pair[1], pair[2]
    if left[promotion] == nil then return {'not_in_order', promotion} end
    if amount > left[promotion] then return {'too_much', promotion, tostring(left[promotion])} end
    wanted[promotion] = amount
    table.insert(wanted, promotion)
  end
end
local answer = {}
for _, promotion in ipairs(wanted) do
  redis.call('HINCRBY', KEYS[1], 'refunded:' .. promotion, wanted[promotion])
  redis.call('HINCRBY', balance[promotion], 'refunded', wanted[promotion])
  -- cjson would print large amounts in floating point; integers are written out whole.
  table.insert(answer, '[' .. cjson.encode(promotion) .. ',' .. string.format('%d', wanted[promotion]) .. ']')
end
local encoded = '[' .. table.concat(answer, ',') .. ']'
redis.call('SET', KEYS[2], encoded)
return {'ok', encoded}
"""

# KEYS: grants, balance, promotions. ARGV: grant id, promotion, amount.
_APPLY_GRANT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'granted', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# KEYS: balance. ARGV: amount.
_TAKE_BACK = (
    _AVAILABLE
    + """
local taken = math.min(tonumber(ARGV[1]), available(KEYS[1]))
if taken <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'returned', taken)
return taken
"""
)


class RedisLedger:
    def __init__(self, client: redis.Redis, region: str) -> None:
        self._redis = client
        self._tag = f"{{quota:{region}}}"
        self._deduct = client.register_script(_DEDUCT)
        self._refund = client.register_script(_REFUND)
        self._apply_grant = client.register_script(_APPLY_GRANT)
        self._take_back = client.register_script(_TAKE_BACK)

    def _key(self, *parts: str) -> str:
        return ":".join((self._tag, *parts))

    async def incarnation(self) -> str:
        # Sorts by start time, as the center requires of incarnations (see quota_center.ledger.admit).
        await self._redis.set(self._key("incarnation"), f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}", nx=True)
        return _text(await self._redis.get(self._key("incarnation")))

    async def find_order(self, order_key: str, lines: tuple[Line, ...]) -> DeductOutcome | None:
        first = await self._redis.hget(self._key("order", order_key), "lines")
        if first is None:
            return None
        if _text(first) != _encode(lines):
            raise _reused(order_key)
        return DeductOutcome(lines, replayed=True)

    async def deduct(self, order_key: str, lines: tuple[Line, ...]) -> DeductOutcome:
        keys = [self._key("order", order_key), *(self._key("balance", line.promotion_id) for line in lines)]
        answer: list[Any] = await self._deduct(keys=keys, args=[_encode(lines), *(line.amount for line in lines)])
        status = answer[0].decode()
        if status == "replay":
            return DeductOutcome(lines, replayed=True)
        if status == "conflict":
            raise _reused(order_key)
        if status == "short":
            return DeductOutcome(lines, short=tuple(dict.fromkeys(lines[int(i) - 1].promotion_id for i in answer[1:])))
        return DeductOutcome(lines, available_after=tuple(int(left) for left in answer[1:]))

    async def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...]) -> RefundOutcome:
        order = self._key("order", order_key)
        first = await self._redis.hget(order, "lines")
        if first is None:
            raise NotFound(f"no deduction with order key {order_key!r} in this region; nothing to refund")
        promotions = [promotion for promotion, _, _ in json.loads(first)]
        keys = [order, self._key("refund", order_key, refund_id), *(self._key("balance", p) for p in promotions)]
        wanted = json.dumps([[line.promotion_id, line.amount] for line in lines]) if lines else ""
        answer: list[Any] = await self._refund(keys=keys, args=[wanted])
        status = answer[0].decode()
        if status == "not_found":
            raise NotFound(f"no deduction with order key {order_key!r} in this region; nothing to refund")
        if status == "not_in_order":
            raise InvalidArgument(f"order {order_key!r} has no line for promotion {answer[1].decode()!r}")
        if status == "too_much":
            promotion, left = answer[1].decode(), int(answer[2])
            asked = next(line.amount for line in lines if line.promotion_id == promotion)
            raise FailedPrecondition(
                f"order {order_key!r} has {left} of {promotion!r} left to refund; at most {left} can be "
                f"refunded, not {asked}"
            )
        refunded = tuple(Line(promotion, int(amount)) for promotion, amount in json.loads(answer[1]))
        return RefundOutcome(refunded, replayed=status == "replay")

    async def apply_grant(self, grant_id: str, promotion_id: str, amount: int) -> bool:
        keys = [self._key("grants"), self._key("balance", promotion_id), self._key("promotions")]
        return bool(await self._apply_grant(keys=keys, args=[grant_id, promotion_id, amount]))

    async def take_back(self, promotion_id: str, amount: int) -> int:
        return int(await self._take_back(keys=[self._key("balance", promotion_id)], args=[amount]))

    async def balance(self, promotion_id: str) -> Balance:
        values = await self._redis.hmget(
            self._key("balance", promotion_id), ["granted", "returned", "deducted", "refunded"]
        )
        granted, returned, deducted, refunded = (int(value or 0) for value in values)
        return Balance(granted, returned, deducted, refunded)

    async def balances(self) -> dict[str, Balance]:
        promotions = sorted(_text(member) for member in await self._redis.smembers(self._key("promotions")))
        return {promotion: await self.balance(promotion) for promotion in promotions}


def _text(value: bytes | str | None) -> str:
    """redis-py answers bytes unless told to decode; keys and JSON here are UTF-8."""
    assert value is not None
    return value.decode() if isinstance(value, bytes) else value


def _encode(lines: tuple[Line, ...]) -> str:
    return json.dumps([[line.promotion_id, line.amount, line.user_id] for line in lines], separators=(",", ":"))


def _reused(order_key: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"order key {order_key!r} was already deducted with different lines; use a new order key for a different order"
    )
