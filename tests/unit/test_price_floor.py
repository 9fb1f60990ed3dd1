"""The price floor as the agent judges one order line: integers only, a price at the floor passes, one
minor unit under it does not, and a line that states no price is never judged."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from quota_common.model import Kind, Promotion
from quota_common.validation import MAX_AMOUNT
from region_agent.floor import BPS, BelowFloor, BelowFloorCount, floor_of, is_below_floor, paid_per_unit
from region_agent.ledger.base import Line

PROMOTION = Promotion("flash", Kind.COUNT, "", 1_000, 0, 1, ("eu",))
prices = st.integers(min_value=1, max_value=MAX_AMOUNT)
floor_prices = st.integers(min_value=0, max_value=MAX_AMOUNT)
floor_shares = st.integers(min_value=0, max_value=BPS)


@st.composite
def priced_lines(draw: st.DrawFn) -> Line:
    unit_price = draw(prices)
    return Line("flash", 1, "user", unit_price, draw(st.integers(min_value=0, max_value=unit_price)))


def _floored(floor_price: int, floor_bps: int, block: bool = False) -> Promotion:
    return replace(PROMOTION, floor_price=floor_price, floor_bps=floor_bps, block_below_floor=block)


def test_the_flash_price_one_zero_short_is_below_a_half_price_floor() -> None:
    promotion = _floored(0, 5_000)
    typo = Line("flash", 1, "user", 99_900, 89_910)  # 999.00 sold at 99.90, meant as 999.00 less 99.90

    assert paid_per_unit(typo) == 9_990
    assert floor_of(promotion, typo) == 49_950
    assert is_below_floor(promotion, typo)
    assert not is_below_floor(promotion, Line("flash", 1, "user", 99_900, 9_990))
    assert "sells a unit at 9990 (99900 less a discount of 89910), below its floor of 49950" in (
        BelowFloor(promotion, typo).describe()
    )


@given(priced_lines(), floor_prices, floor_shares)
def test_a_line_is_below_the_floor_exactly_when_it_pays_less_than_the_whole_unit_floor(
    line: Line, floor_price: int, floor_bps: int
) -> None:
    promotion = _floored(floor_price, floor_bps)

    assert is_below_floor(promotion, line) == (paid_per_unit(line) < floor_of(promotion, line))


@given(prices, floor_shares)
def test_a_price_at_the_floor_passes_and_one_minor_unit_less_does_not(unit_price: int, floor_bps: int) -> None:
    for promotion in (_floored(0, floor_bps), _floored(unit_price * floor_bps // BPS, 0)):
        floor = floor_of(promotion, Line("flash", 1, "user", unit_price))
        at_floor = Line("flash", 1, "user", unit_price, unit_price - floor)

        assert not is_below_floor(promotion, at_floor)
        if floor > 0:
            assert is_below_floor(promotion, replace(at_floor, discount=at_floor.discount + 1))


@given(priced_lines(), floor_prices, floor_shares, st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_a_larger_discount_never_lifts_a_line_above_the_floor(
    line: Line, floor_price: int, floor_bps: int, more: int
) -> None:
    promotion = _floored(floor_price, floor_bps)
    deeper = replace(line, discount=min(line.unit_price, line.discount + more))

    assert is_below_floor(promotion, deeper) >= is_below_floor(promotion, line)


@given(priced_lines())
def test_without_a_floor_no_line_is_below_it(line: Line) -> None:
    assert not is_below_floor(PROMOTION, line)


@given(floor_prices, floor_shares, st.integers(min_value=1, max_value=MAX_AMOUNT))
def test_a_line_that_states_no_price_is_never_judged(floor_price: int, floor_bps: int, amount: int) -> None:
    assert not is_below_floor(_floored(floor_price, floor_bps), Line("flash", amount, "user"))


def test_the_count_is_per_ledger_life_and_keeps_what_it_saw_before_the_first_join() -> None:
    count = BelowFloorCount()
    below = [BelowFloor(_floored(100, 0), Line("flash", 1, "user", 50))]

    count.add("", below)  # refused before the agent could join the center
    count.add("life-1", below)
    assert count.of("life-1", "flash") == 2
    assert count.of("life-1", "other") == 0

    count.add("life-2", below)
    assert count.of("life-2", "flash") == 1
    assert count.of("life-1", "flash") == 0
