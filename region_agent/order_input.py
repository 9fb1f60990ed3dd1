"""What an order call must carry, checked alike wherever it comes from: the gRPC servicer and the agent
embedded in an order service. Each check raises InvalidArgument naming the field; nothing is changed yet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from quota_common.errors import InvalidArgument
from quota_common.validation import (
    FITTING_ID_CHARS,
    MAX_AMOUNT,
    MAX_LINES,
    quoted,
    require_amount,
    require_id,
    require_optional_amount,
    require_total,
    require_unique,
    require_whole,
)
from region_agent.ledger.base import Line

MIN_HOLD_MS, MAX_HOLD_MS = 1_000, 86_400_000


class GivenLine(Protocol):
    """A line as the caller gave it: a `Line`, or the API's own message (the servicer checks that one as it
    came, rather than copying every line into a `Line` only to build it again here)."""

    @property
    def promotion_id(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def user_id(self) -> str: ...
    @property
    def unit_price(self) -> int: ...
    @property
    def discount(self) -> int: ...


def _check_line_count(count: int, at_least: int) -> None:
    if count < at_least:
        raise InvalidArgument("an order needs at least one line")
    if count > MAX_LINES:
        raise InvalidArgument(f"an order has at most {MAX_LINES} lines, got {count}; split it")


def hold_ms(ttl_ms: int, default_ms: int) -> int:
    """A reservation's hold: `ttl_ms`, or `default_ms` for 0."""
    if require_whole("ttl_ms", ttl_ms) == 0:
        return default_ms
    if not MIN_HOLD_MS <= ttl_ms <= MAX_HOLD_MS:
        raise InvalidArgument(
            f"ttl_ms must be within {MIN_HOLD_MS} (1 s) and {MAX_HOLD_MS} (24 h), or 0 for the agent's default; "
            f"got {ttl_ms}"
        )
    return ttl_ms


def order_lines(given: Sequence[GivenLine]) -> tuple[Line, ...]:
    """An order's lines, checked: 1..MAX_LINES, each promotion once, ids and amounts in range, prices coherent."""
    _check_line_count(len(given), at_least=1)  # first: no line of an oversized order is copied
    lines = tuple([Line(g.promotion_id, g.amount, g.user_id, g.unit_price, g.discount) for g in given])
    if not _plainly_valid(lines):
        _check(lines)
    return lines


def _plainly_valid(lines: tuple[Line, ...]) -> bool:
    """True only for lines that pass every check of `_check`, decided in one pass with no call per field:
    every order comes this way, and per-field calls cost a gRPC agent more than its own decisions do.
    False decides nothing (an id too long to tell without encoding it, or a line in error): `_check` then
    finds the lines valid after all, or names what is wrong."""
    total = 0
    for line in lines:
        if not (
            type(line.amount) is type(line.unit_price) is type(line.discount) is int
            and type(line.promotion_id) is type(line.user_id) is str
            and 0 < len(line.promotion_id) <= FITTING_ID_CHARS
            and 0 < len(line.user_id) <= FITTING_ID_CHARS
            and line.amount > 0
            and 0 <= line.discount <= line.unit_price <= MAX_AMOUNT
        ):
            return False
        total += line.amount
    return total <= MAX_AMOUNT and (len(lines) == 1 or len({line.promotion_id for line in lines}) == len(lines))


def _check(lines: tuple[Line, ...]) -> None:
    """Raises InvalidArgument naming the first field in error, if any (the lines counted already)."""
    for line in lines:
        require_id("lines.promotion_id", line.promotion_id)
        require_amount("lines.amount", line.amount)
        require_id("lines.user_id", line.user_id)
        _prices(line)
    require_unique("lines.promotion_id", (line.promotion_id for line in lines))
    require_total("lines.amount", (line.amount for line in lines))


def _prices(line: Line) -> None:
    """Checks (unit_price, discount): 0/0 is a line that states no price (callers from before prices)."""
    unit_price = require_optional_amount("lines.unit_price", line.unit_price)
    if require_whole("lines.discount", line.discount) < 0:
        raise InvalidArgument(f"lines.discount must be 0 or positive, got {line.discount}")
    if line.discount and not unit_price:
        raise InvalidArgument(
            f"line of promotion {quoted(line.promotion_id)} states a discount of {line.discount} but no unit_price: "
            "state the unit price the discount comes off, or neither"
        )
    if line.discount > unit_price:
        raise InvalidArgument(
            f"line of promotion {quoted(line.promotion_id)} takes a discount of {line.discount} off a unit_price "
            f"of {unit_price}: a discount is at most the unit price"
        )


def refund_lines(given: Sequence[Line]) -> tuple[Line, ...]:
    """A refund's lines (none: everything the order has left), each promotion once, amounts in range."""
    _check_line_count(len(given), at_least=0)
    lines = tuple(
        Line(require_id("lines.promotion_id", line.promotion_id), require_amount("lines.amount", line.amount))
        for line in given
    )
    require_unique("lines.promotion_id", (line.promotion_id for line in lines))
    return lines
