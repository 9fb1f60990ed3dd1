"""An order's lines are checked in one pass when they are plainly valid (every order takes that way), and by
the named checks otherwise: the one pass accepts nothing the named checks refuse, and lets through the
orders order services send."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quota_common.errors import InvalidArgument
from quota_common.validation import MAX_AMOUNT, MAX_ID_BYTES, MAX_LINES, require_id, require_region
from region_agent.ledger.base import Line
from region_agent.order_input import _check, _plainly_valid, order_lines

QUICK = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

EDGE_IDS = [
    "",
    "p",
    "x" * MAX_ID_BYTES,
    "x" * (MAX_ID_BYTES + 1),
    "é" * (MAX_ID_BYTES // 2),
    "é" * 65,
    "€" * 33,
    "€" * 42,
    "€" * 43,
    "𝄞" * 32,
    "𝄞" * 33,
]
"""Empty; at and past the byte limit (128) in ASCII and in two-, three- and four-byte characters."""
MISTYPED: list[Any] = [None, True, False, 1.0, 1.5, Decimal(1), "1", b"a"]
"""What an order service embedding the agent may pass by mistake: never a field's type over the wire."""
IDS = st.sampled_from(EDGE_IDS) | st.text(max_size=40) | st.sampled_from(["a", "b", "c"]) | st.sampled_from(MISTYPED)
AMOUNTS = (
    st.integers(-2, 6)
    | st.sampled_from([MAX_AMOUNT - 1, MAX_AMOUNT, MAX_AMOUNT + 1, 2**63])
    | st.sampled_from(MISTYPED)
)
LINES = st.builds(Line, IDS, AMOUNTS, IDS, AMOUNTS, AMOUNTS)


def _refusal(lines: tuple[Line, ...]) -> str | None:
    try:
        _check(lines)
    except InvalidArgument as refused:
        return refused.message
    return None


@QUICK
@given(st.lists(LINES, min_size=1, max_size=4).map(tuple))
@example((Line("a", MAX_AMOUNT, "u"), Line("b", 1, "u")))  # each line in range, their sum not
def test_the_one_pass_accepts_nothing_the_named_checks_refuse(lines: tuple[Line, ...]) -> None:
    refusal = _refusal(lines)
    if _plainly_valid(lines):
        assert refusal is None
    if refusal is None:
        assert order_lines(lines) == lines
    else:
        with pytest.raises(InvalidArgument) as refused:
            order_lines(lines)
        assert refused.value.message == refusal


PLAIN_IDS = st.text(st.characters(codec="ascii", min_codepoint=33), min_size=1, max_size=MAX_ID_BYTES // 4)
PRICED = st.integers(0, 10**6).flatmap(lambda price: st.tuples(st.just(price), st.integers(0, price)))


@QUICK
@given(st.lists(st.tuples(PLAIN_IDS, st.integers(1, 1000), PLAIN_IDS, PRICED), min_size=1, max_size=8))
def test_orders_as_order_services_send_them_take_the_one_pass(
    given_lines: list[tuple[str, int, str, tuple[int, int]]],
) -> None:
    lines = tuple(Line(promotion, amount, user, *prices) for promotion, amount, user, prices in given_lines)
    distinct = len({line.promotion_id for line in lines}) == len(lines)
    assert _plainly_valid(lines) == distinct


@pytest.mark.parametrize("count", [0, 1, MAX_LINES, MAX_LINES + 1])
def test_an_order_has_one_to_max_lines(count: int) -> None:
    lines = [Line(f"p{number}", 1, "u") for number in range(count)]
    if 1 <= count <= MAX_LINES:
        assert len(order_lines(lines)) == count
    else:
        with pytest.raises(InvalidArgument, match="line"):
            order_lines(lines)


@pytest.mark.parametrize("value", EDGE_IDS)
def test_an_id_is_refused_when_empty_or_above_the_byte_limit(value: str) -> None:
    fits = 0 < len(value.encode()) <= MAX_ID_BYTES
    # A region's name is also what an agent's identity may carry: ASCII letters, digits, _ and -.
    for check, allowed in ((require_id, fits), (require_region, fits and value.isascii())):
        if allowed:
            assert check("field", value) == value
        else:
            with pytest.raises(InvalidArgument, match="field"):
                check("field", value)


def test_a_missing_field_from_an_embedding_caller_is_named_not_a_type_error() -> None:
    """Python callers of the embedded agent can pass None where gRPC cannot."""
    missing: Any = None
    for line, field in [
        (Line(missing, 1, "u"), "lines.promotion_id"),
        (Line("p", 1, missing), "lines.user_id"),
    ]:
        with pytest.raises(InvalidArgument, match=field):
            order_lines([line])
    for check in (require_id, require_region):
        with pytest.raises(InvalidArgument, match="required"):
            check("order_key", missing)


@pytest.mark.parametrize("value", [value for value in MISTYPED if value is not None])
def test_a_field_of_another_type_from_an_embedding_caller_is_refused_by_name(value: Any) -> None:
    """A float, bool or Decimal amount would reach the ledger's Redis script, which cannot store it."""
    for line, field in [
        (Line(value, 1, "u"), "lines.promotion_id"),
        (Line("p", value, "u"), "lines.amount"),
        (Line("p", 1, value), "lines.user_id"),
        (Line("p", 1, "u", value), "lines.unit_price"),
        (Line("p", 1, "u", 10, value), "lines.discount"),
    ]:
        if isinstance(value, str) and field in ("lines.promotion_id", "lines.user_id"):
            continue  # a string is an id
        with pytest.raises(InvalidArgument, match=field):
            order_lines([line])
