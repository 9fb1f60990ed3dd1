"""An order's lines are checked in one pass when they are plainly valid (every order takes that way), and by
the named checks otherwise: the one pass accepts nothing the named checks refuse, and lets through the
orders order services send."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quota_common.errors import InvalidArgument
from quota_common.validation import MAX_AMOUNT, MAX_ID_BYTES
from region_agent.ledger.base import Line
from region_agent.order_input import _check, _plainly_valid, order_lines

QUICK = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

EDGE_IDS = ["", "p", "x" * MAX_ID_BYTES, "x" * (MAX_ID_BYTES + 1), "é" * (MAX_ID_BYTES // 2), "é" * 65, "€" * 33]
"""Empty; at and past the byte limit in ASCII; two- and three-byte characters around it."""
IDS = st.sampled_from(EDGE_IDS) | st.text(max_size=40) | st.sampled_from(["a", "b", "c"])
AMOUNTS = st.integers(-2, 6) | st.sampled_from([MAX_AMOUNT - 1, MAX_AMOUNT, MAX_AMOUNT + 1, 2**63])
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
