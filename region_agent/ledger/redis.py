"""The regional ledger in the region's Redis, shared by all of the region's agents.

Every operation is one Lua script (EVALSHA over the ledger's own connection, `script_link`), so it is
atomic across all its keys and all agent processes. All keys of a region share the hash
tag `{quota:<region>}`, so a multi-line order touching several promotions runs in one slot
on Redis Cluster too. Layout:

    {quota:R}:incarnation                  hash: life (the current one), sequence (writes in it), and
                                           after_loss (1: the life began after an agent saw the one before
                                           it lost)
    {quota:R}:refill:<promotion>           which agent is acquiring for the promotion (expires by itself)
    {quota:R}:<life>:promotions            set of promotion ids with a balance
    {quota:R}:<life>:balance:<promotion>   hash granted, returned, deducted, refunded, held, and
                                           available (kept by the scripts, which never add up counters)
    {quota:R}:<life>:grants                set of applied grant ids
    {quota:R}:<life>:order:<order key>     hash lines (JSON, the first answer), refunded:<promotion>,
                                           placer (the identity that placed it; absent: none),
                                           and for a reservation state and expires (Unix ms);
                                           kept for the retention period (default 7 days) from
                                           the deduction, from when the reservation ended, or
                                           from its latest refund
    {quota:R}:<life>:reservations          sorted set of pending reservations' order keys by deadline
    {quota:R}:<life>:refund:[<order>,<id>] the first answer of a refund (JSON); kept as long
    {quota:R}:<life>:user:[<promotion>,<user>]  hash units, orders a user holds, for per-user limits

Data keys carry the life, so a new life starts empty whatever an old one left behind.
Reservation deadlines come from Redis's clock (TIME), the one clock all agents share.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from quota_common.errors import FailedPrecondition, InvalidArgument, LedgerLost, LedgerUnreachable
from quota_common.incarnation import new_incarnation
from quota_common.validation import require_unique
from region_agent.ledger.base import (
    NO_LIMITS,
    RETENTION_S,
    UNLIMITED,
    Balance,
    DeductOutcome,
    Issuer,
    Joined,
    Line,
    OrderView,
    RefundOutcome,
    Settle,
    SettleOutcome,
    UserLimit,
    at_ceiling,
    check_replay,
    lines_match,
    not_the_placer,
    refund_id_reused,
    settled_before,
    unconfirmed_refund,
    unknown_deduction,
    unknown_reservation,
)
from region_agent.ledger.batching import Batcher
from region_agent.ledger.redis_acl import region_tag
from region_agent.ledger.redis_scripts import (
    APPLY_GRANT,
    DEDUCT,
    DUE,
    FORGET,
    ORDER,
    REFUND,
    RELEASE,
    RETURN_QUOTA,
    SETTLE,
)
from region_agent.ledger.script_link import LuaScript, ScriptLink

P = ParamSpec("P")
T = TypeVar("T")
BALANCE_FIELDS = ["granted", "returned", "deducted", "refunded", "held", "available"]
"""The balance hash's fields, in Balance's order (`available` is its `kept`)."""
_Deduction = tuple[str, tuple[Line, ...], Mapping[str, UserLimit], int, str]
"""order key, lines, limits, hold in ms, placer"""


def _reachable(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Answers a Redis outage (down, restarting, loading its AOF, refusing the call) during a read as
    UNAVAILABLE: nothing was applied."""
    return _answering_outage(method, may_have_applied=False)


def _writing(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Answers a Redis outage during a write as UNAVAILABLE that may have applied: the connection may have
    dropped after the script ran. The caller retries with the same key (every script is idempotent by it,
    so an applied but unanswered call replays) or reads the order."""
    return _answering_outage(method, may_have_applied=True)


def _answering_outage(
    method: Callable[P, Coroutine[Any, Any, T]], may_have_applied: bool
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as outage:
            raise LedgerUnreachable(
                f"the region's Redis is unreachable ({outage}); retry with the same key", may_have_applied
            ) from outage
        except redis.ResponseError as refused:
            # Redis refused the call: out of memory under `maxmemory`, a replica now after a failover, an
            # ACL without the script's keys. An outage to the caller too (UNAVAILABLE, retried elsewhere or
            # later), not an internal error; and for a write, Redis may have stopped a script midway.
            raise LedgerUnreachable(
                f"the region's Redis refused the ledger's call ({refused}); retry with the same key", may_have_applied
            ) from refused

    return wrapper


class RedisLedger:
    outlives_agent = True

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        region: str,
        retention_s: float = RETENTION_S,
        owns_client: bool = False,
    ) -> None:
        """Orders and refunds are remembered (their retries replay) for `retention_s`. `owns_client`: `aclose`
        closes `client` too (it was made for this ledger and whatever shares it stops with the ledger).
        `client` is one Redis or a Redis Cluster; on a cluster the region's keys
        live in the one slot of its hash tag."""
        self._redis = client
        self._owns_client = owns_client
        self._retention_ms = max(1, round(retention_s * 1000))
        self._tag = region_tag(region)
        self._scripts = ScriptLink(client)
        self._deductions = Batcher(self._deduct_many)
        self._incarnation: str | None = None
        self._floor = 0
        """The highest sequence number this agent saw in the current life: Redis must never show less."""
        self._last_life = ""
        """The life this ledger last took part in, kept when Redis lost it: a new one then follows a loss."""

    async def aclose(self) -> None:
        """Closes the ledger's own connection, and the client it was given if it owns it."""
        await self._scripts.aclose()
        if self._owns_client:
            await self._redis.aclose()

    def _key(self, *parts: str) -> str:
        return ":".join((self._tag, *parts))

    def _prefix(self, life: str | None = None) -> str:
        """How the keys of the ledger's data in `life` (default: the current one) begin."""
        life = life or self._incarnation
        if life is None:
            raise _lost()
        return f"{self._tag}:{life}:"

    def _data(self, *parts: str, life: str | None = None) -> str:
        """A key of the ledger's data in `life` (default: the current one)."""
        return self._prefix(life) + ":".join(parts)

    def _line_keys(self, lines: tuple[Line, ...], prefix: str) -> list[str]:
        """The keys an order's lines touch, in the order the scripts read them: every line's
        balance, then every line's user counter."""
        return [
            *(f"{prefix}balance:{line.promotion_id}" for line in lines),
            # JSON keeps "a:b" + "c" apart from "a" + "b:c".
            *(f"{prefix}user:{_json_pair(line.promotion_id, line.user_id)}" for line in lines),
        ]

    @_reachable
    async def incarnation(self, issue: Issuer | None = None) -> str:
        """The life this agent takes part in, checked against Redis on every call: when Redis
        lost it, all of the region's agents converge on one new life (the first to store the one
        it was issued wins), and the center writes off what the old one held."""
        key = self._key("incarnation")
        stored = await self._redis.hget(key, "life")
        if stored is None:
            joined = Joined(new_incarnation(time.time_ns())) if issue is None else await issue(self._last_life)
            if await self._redis.hsetnx(key, "life", joined.incarnation):
                # A Redis that lost its data while no agent ran looks new; the center knows the life it replaces.
                await self._redis.hset(key, "sequence", 0)
                if joined.after_earlier_life:
                    await self._redis.hset(key, "after_loss", 1)
            stored = await self._redis.hget(key, "life")
            if stored is None:
                raise _lost()
        life = _text(stored)
        if self._last_life and life != self._last_life:
            # The life this agent knew ended (lost, rolled back, or replaced after another agent saw that):
            # the new one follows a loss, for every agent of the region to read.
            await self._redis.hset(key, "after_loss", 1)
        if life != self._incarnation:
            self._incarnation, self._floor, self._last_life = life, 0, life
        return life

    @_reachable
    async def life_lost(self) -> bool:
        """Whether an agent of the region saw the life before this one end, or the center said at the Join of
        this one that it replaces an earlier life (a Redis that lost its data while no agent ran)."""
        return await self._redis.hget(self._key("incarnation"), "after_loss") is not None

    async def _run(
        self, script: LuaScript, keys: list[str], args: list[str | int], life: str | None = None
    ) -> list[Any]:
        """Runs a script in `life` (default: this ledger's); raises LedgerLost when Redis is no
        longer in it or went back in time."""
        expected = life or self._incarnation
        if expected is None:
            raise _lost()
        floor = self._floor if expected == self._incarnation else 0
        incarnation = self._key("incarnation")
        answer: list[Any] = await self._scripts.run(script, [incarnation, *keys], [f"{expected}|{floor}", *args])
        if answer[0] == b"rolled_back":
            # Forget the life for every agent of the region: the next ones to ask start a new one.
            await self._scripts.run(FORGET, [incarnation], [expected])
        if answer[0] in (b"lost", b"rolled_back"):
            if expected == self._incarnation:
                self._incarnation = None
            raise _lost()
        if expected == self._incarnation:
            self._floor = max(self._floor, int(answer[-1]))
        return answer[:-1]

    @_reachable
    async def find_order(
        self, order_key: str, lines: tuple[Line, ...], reserve: bool = False, placer: str = ""
    ) -> DeductOutcome | None:
        first, state, expires, placed_by = await self._redis.hmget(
            self._data("order", order_key), ["lines", "state", "expires", "placer"]
        )
        if first is None:
            return None
        if (_text(placed_by) if placed_by is not None else "") != placer:
            raise not_the_placer(order_key, placer)
        same = _text(first) == _encode(lines) or lines_match(_decode(first), lines)
        check_replay(order_key, same, state is not None, reserve)
        return DeductOutcome(lines, replayed=True, expires_at_ms=int(expires or 0))

    @_reachable
    async def get_order(self, order_key: str, placer: str = "") -> OrderView | None:
        life = self._incarnation
        if life is None:
            raise _lost()
        keys = [self._key("incarnation"), self._data("order", order_key)]
        answer = await self._scripts.run(ORDER, keys, [f"{life}|{self._floor}"])
        if answer[0] in (b"lost", b"rolled_back"):
            raise _lost()  # the next write (or renewal) moves the region to a new life
        if answer[0] == b"none":
            return None
        _, first, placed_by, state, expires, refunded = answer
        if _text(placed_by) != placer:
            raise not_the_placer(order_key, placer)
        lines = _decode(first)
        given_back = tuple(
            Line(line.promotion_id, int(amount)) for line, amount in zip(lines, refunded, strict=True) if int(amount)
        )
        return OrderView(_text(state), lines, int(expires), given_back)

    @_writing
    async def deduct(
        self,
        order_key: str,
        lines: tuple[Line, ...],
        limits: Mapping[str, UserLimit] = NO_LIMITS,
        hold_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        answer = await self._deductions.submit((order_key, lines, limits, hold_ms, placer))
        status = answer[0].decode()
        if status == "denied":
            raise not_the_placer(order_key, placer)
        if status == "replay":
            # The script compares the lines as recorded, in their order; in another order they may still match.
            same = bool(answer[1]) or lines_match(await self._recorded_lines(order_key), lines)
            check_replay(order_key, same_lines=same, was_reservation=bool(answer[2]), reserve=hold_ms > 0)
            return DeductOutcome(lines, replayed=True, expires_at_ms=int(answer[3]))
        if status == "at_ceiling":
            raise at_ceiling(lines[int(answer[1]) - 1].promotion_id, "deducted")
        if status in ("short", "over_limit"):
            promotions = tuple(dict.fromkeys(lines[int(i) - 1].promotion_id for i in answer[1:]))
            if status == "short":
                return DeductOutcome(lines, short=promotions)
            return DeductOutcome(lines, over_limit=promotions)
        return DeductOutcome(
            lines, available_after=tuple(int(left) for left in answer[2:]), expires_at_ms=int(answer[1])
        )

    async def _deduct_many(self, calls: Sequence[_Deduction]) -> list[list[Any]]:
        """One script call for every deduction in the batch; one answer each, in order."""
        prefix = self._prefix()
        keys = [f"{prefix}reservations"]
        args: list[str | int] = [self._retention_ms]
        for order_key, lines, limits, hold_ms, placer in calls:
            line_limits = [limits.get(line.promotion_id, UNLIMITED) for line in lines]
            keys += [f"{prefix}order:{order_key}", *self._line_keys(lines, prefix)]
            args += [
                len(lines),
                _encode(lines),
                *(line.amount for line in lines),
                *(limit.units for limit in line_limits),
                *(limit.orders for limit in line_limits),
                order_key,
                hold_ms,
                placer,
            ]
        answers: list[list[Any]] = await self._run(DEDUCT, keys, args)
        return answers

    @_writing
    async def settle(self, order_key: str, how: Settle, placer: str = "") -> SettleOutcome:
        ended = await self._end_reservation(order_key, how.value, placer)
        if ended is None:
            raise unknown_reservation(order_key)
        changed, state, expires_at_ms, lines = ended
        if changed:
            return SettleOutcome(lines)
        return settled_before(order_key, how, state, expires_at_ms, lines)

    @_writing
    async def expire_reservations(self) -> int:
        """Releases up to a thousand due reservations per call; the renew loop calls it every second."""
        due = await self._scripts.run(DUE, [self._data("reservations")], [1000])
        released = 0
        for order_key in due:
            ended = await self._end_reservation(_text(order_key), "expire")
            released += bool(ended and ended[0])
        return released

    async def _end_reservation(
        self, order_key: str, action: str, placer: str = ""
    ) -> tuple[bool, str, int, tuple[Line, ...]] | None:
        """Runs the settle script (as `placer`, which expiry does not need); None for an unknown order
        key, else whether this call changed the reservation, its state before, its deadline and its lines."""
        order = self._data("order", order_key)
        first = await self._redis.hget(order, "lines")
        if first is None:
            return None
        lines = _decode(first)
        keys = [order, self._data("reservations"), *self._line_keys(lines, self._prefix())]
        answer = await self._run(SETTLE, keys, [action, order_key, self._retention_ms, placer])
        if answer[0] == b"not_found":
            return None
        if answer[0] == b"denied":
            raise not_the_placer(order_key, placer)
        if answer[0] == b"at_ceiling":
            raise at_ceiling(answer[1].decode(), "deducted")
        return answer[0] == b"done", answer[1].decode(), int(answer[2]), lines

    @_writing
    async def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...], placer: str = "") -> RefundOutcome:
        # The script checks each line against what the order has left; a promotion twice would pass twice.
        require_unique("lines.promotion_id", (line.promotion_id for line in lines))
        order = self._data("order", order_key)
        first = await self._redis.hget(order, "lines")
        if first is None:
            raise unknown_deduction(order_key)
        refund_record = self._data("refund", _json_pair(order_key, refund_id))
        keys = [order, refund_record, *self._line_keys(_decode(first), self._prefix())]
        wanted = json.dumps([[line.promotion_id, line.amount] for line in lines]) if lines else ""
        answer = await self._run(REFUND, keys, [wanted, self._retention_ms, placer])
        status = answer[0].decode()
        if status == "denied":
            raise not_the_placer(order_key, placer)
        if status == "not_found":
            raise unknown_deduction(order_key)
        if status == "other_lines":
            replay = await self._replay_of_refund(refund_record, lines)
            if replay is None:
                raise refund_id_reused(order_key, refund_id)
            answer, status = replay, "replay"
        if status == "unconfirmed":
            raise unconfirmed_refund(order_key, answer[1].decode())
        if status == "at_ceiling":
            raise at_ceiling(answer[1].decode(), "refunded")
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

    async def _recorded_lines(self, order_key: str) -> tuple[Line, ...]:
        """The lines an order was recorded with; none once it is forgotten."""
        recorded = await self._redis.hget(self._data("order", order_key), "lines")
        return () if recorded is None else _decode(recorded)

    async def _replay_of_refund(self, refund_record: str, lines: tuple[Line, ...]) -> list[bytes] | None:
        """The refund script's answer for a retry of the recorded refund whose lines came in another order (the
        script compares them as sent); None when they are other lines."""
        recorded = await self._redis.get(refund_record)
        asked, _, answer = _text(recorded or b"").partition("\n")
        if not (asked and lines):  # a refund of "everything left" matches only itself, which the script saw
            return None
        if not lines_match(_decode(asked), lines):
            return None
        return [b"replay", answer.encode()]

    @_writing
    async def apply_grant(self, grant_id: str, promotion_id: str, amount: int, incarnation: str) -> bool:
        keys = [
            self._data("grants", life=incarnation),
            self._data("balance", promotion_id, life=incarnation),
            self._data("promotions", life=incarnation),
        ]
        answer = await self._run(APPLY_GRANT, keys, [grant_id, promotion_id, amount], life=incarnation)
        if answer[0] == b"at_ceiling":
            raise at_ceiling(promotion_id, "granted")
        return bool(answer[0] == b"ok")

    @_writing
    async def return_quota(self, promotion_id: str, amount: int) -> int:
        answer = await self._run(RETURN_QUOTA, [self._data("balance", promotion_id)], [amount])
        if answer[0] == b"at_ceiling":
            raise at_ceiling(promotion_id, "returned")
        return int(answer[1])

    @_writing
    async def claim_refill(self, promotion_id: str, holder: str, ttl_s: float) -> bool:
        claim = self._key("refill", promotion_id)
        return bool(await self._redis.set(claim, holder, nx=True, px=max(1, round(ttl_s * 1000))))

    @_writing
    async def release_refill(self, promotion_id: str, holder: str) -> None:
        await self._scripts.run(RELEASE, [self._key("refill", promotion_id)], [holder])

    @_reachable
    async def balance(self, promotion_id: str) -> Balance:
        return _balance(await self._redis.hmget(self._data("balance", promotion_id), BALANCE_FIELDS))

    @_reachable
    async def balances(self) -> dict[str, Balance]:
        """Every promotion's balance in one round trip (metrics scrape it; a region may hold thousands)."""
        promotions = sorted(_text(member) for member in await self._redis.smembers(self._data("promotions")))
        async with self._redis.pipeline(transaction=False) as pipe:
            for promotion in promotions:
                pipe.hmget(self._data("balance", promotion), BALANCE_FIELDS)
            rows = await pipe.execute()
        return {promotion: _balance(row) for promotion, row in zip(promotions, rows, strict=True)}


def _balance(values: Sequence[bytes | str | None]) -> Balance:
    granted, returned, deducted, refunded, held, kept = (int(value) if value else 0 for value in values)
    # A balance written before the scripts kept `available` has none until a script derives it.
    return Balance(granted, returned, deducted, refunded, held, kept=kept if values[-1] is not None else None)


def _lost() -> LedgerLost:
    return LedgerLost(
        "the region's Redis lost this ledger's data; the agent joins as a new incarnation and the "
        "center writes off what the old one held — retry the call"
    )


def _text(value: bytes | str | None) -> str:
    """redis-py answers bytes unless told to decode; keys and JSON here are UTF-8."""
    assert value is not None
    return value.decode() if isinstance(value, bytes) else value


# What json.dumps(..., separators=(",", ":")) writes, without building an encoder per call: these run
# for every order, and the keys and records they make must stay byte for byte what Redis holds.
_quote = encode_basestring_ascii


def _json_pair(first: str, second: str) -> str:
    return f"[{_quote(first)},{_quote(second)}]"


def _encode(lines: tuple[Line, ...]) -> str:
    return f"[{','.join(_encode_line(line) for line in lines)}]"


def _encode_line(line: Line) -> str:
    # A line without prices is stored as before prices existed, so an old caller's retry of an order
    # recorded then still matches it byte for byte.
    prices = f",{line.unit_price},{line.discount}" if line.unit_price or line.discount else ""
    return f"[{_quote(line.promotion_id)},{line.amount},{_quote(line.user_id)}{prices}]"


def _decode(stored: bytes | str) -> tuple[Line, ...]:
    return tuple(Line(*fields) for fields in json.loads(stored))
