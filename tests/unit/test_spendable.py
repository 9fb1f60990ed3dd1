"""The one-pass verdict on an order's promotions says "spendable" only where every named check passes and
no line is below a price floor; and it says so for the orders of open promotions with nothing to check."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_common.errors import Rejected
from quota_common.model import EmergencyFreeze, Kind, Promotion
from region_agent.floor import below_floor
from region_agent.ledger.base import Line
from region_agent.spendable import check_order_limit, check_spendable, plainly_spendable
from region_agent.supply_core import Tracked

QUICK = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NOW, WALL_MS = 100.0, 1_000_000
OPEN = Promotion("p", Kind.COUNT, "", 1000, WALL_MS - 10, WALL_MS + 10, ("eu",))

CHANGES: dict[str, list[Any]] = {
    "regions": [("us",), ("eu.1",), ("us", "eu"), ()],
    "frozen": [True],
    "archived": [True],
    "start_ms": [WALL_MS, WALL_MS + 1],
    "end_ms": [WALL_MS, WALL_MS + 1],
    "floor_price": [-1, 1, 100],
    "floor_bps": [-1, 1, 5_000],
    "max_per_order": [-1, 1, 2],
    "budget": [0, 1, 2],
    "block_below_floor": [True],
}
"""Values that each may or may not stop an order, one field at a time."""
CHANGE = st.sampled_from(sorted(CHANGES)).flatmap(lambda name: st.tuples(st.just(name), st.sampled_from(CHANGES[name])))
PROMOTIONS = st.lists(CHANGE, max_size=2).map(lambda changes: replace(OPEN, **dict(changes)))
"""An open promotion with nothing to check, changed in up to two fields: examples near the line between verdicts."""
SINGLE_CHANGES = [(name, value) for name, values in CHANGES.items() for value in values]
LEASES = [NOW + 1, NOW, NOW - 1]
REGION_NAMES = ["eu", "eu.1", "us"]
LINES = [
    Line("p", amount, "u", price, price * share // 2)
    for amount, price, share in itertools.product([1, 2, 3], [0, 1, 100, 200], [0, 1, 2])
]
"""Unpriced, priced with no discount, half off, and given away (nothing paid: below any floor)."""


def _passes_every_check(region: str, tracked: list[Tracked], lines: tuple[Line, ...]) -> bool:
    try:
        for item, line in zip(tracked, lines, strict=True):
            check_spendable(item, region, "", EmergencyFreeze(), NOW, WALL_MS)
            check_order_limit(item.promotion, line)
    except Rejected:
        return False
    return not below_floor([item.promotion for item in tracked], lines)


def test_one_line_is_spendable_at_a_glance_only_where_every_check_passes() -> None:
    """Every one-line order to a promotion changed in up to two fields, at every lease and in every region."""
    pairs = itertools.combinations_with_replacement([("regions", OPEN.regions), *SINGLE_CHANGES], 2)
    promotions = {replace(OPEN, **dict(pair)) for pair in pairs}
    for promotion, lease_until, line, region in itertools.product(promotions, LEASES, LINES, REGION_NAMES):
        tracked = [Tracked(promotion, lease_until)]
        if plainly_spendable(region, tracked, (line,), NOW, WALL_MS):
            assert _passes_every_check(region, tracked, (line,)), (promotion, lease_until, line, region)


@QUICK
@given(
    st.sampled_from(REGION_NAMES),
    st.lists(st.tuples(PROMOTIONS, st.sampled_from(LEASES), st.sampled_from(LINES)), min_size=2, max_size=3),
)
def test_an_order_is_spendable_at_a_glance_only_where_every_line_passes_every_check(
    region: str, items: list[tuple[Promotion, float, Line]]
) -> None:
    tracked = [Tracked(promotion, lease_until) for promotion, lease_until, _line in items]
    lines = tuple(line for _promotion, _lease, line in items)
    if plainly_spendable(region, tracked, lines, NOW, WALL_MS):
        assert _passes_every_check(region, tracked, lines)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(0, 200)), min_size=1, max_size=3))
def test_orders_of_open_promotions_with_nothing_to_check_pass_at_a_glance(
    orders: list[tuple[int, int, int]],
) -> None:
    tracked = [Tracked(replace(OPEN, max_per_order=max_per_order), NOW + 1) for max_per_order, _, _ in orders]
    lines = tuple(Line("p", amount, "u", price) for _, amount, price in orders)
    fits = all(not most or amount <= most for most, amount, _ in orders)
    assert plainly_spendable("eu", tracked, lines, NOW, WALL_MS) == fits
