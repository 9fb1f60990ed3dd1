"""The allocation policy: numbers in, numbers out (table-driven and property tests)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_common import policy
from quota_common.policy import HOUR_MS, Pacing, RefillSettings
from quota_common.validation import MAX_AMOUNT
from region_agent.demand import RateMeter

QUICK = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


refill_settings = st.builds(
    RefillSettings,
    horizon_s=st.floats(min_value=0.0, max_value=60.0),
    buffer=st.integers(min_value=0, max_value=1_000),
    low_water_fraction=st.floats(min_value=0.0, max_value=1.0),
)
rates = st.floats(min_value=0.0, max_value=10_000.0)


@pytest.mark.parametrize(
    ("available", "rate", "needed", "expected"),
    [
        (0, 0.0, 0, 20),  # idle region: just the buffer
        (20, 0.0, 0, 1),  # already at target: still asks for at least one
        (500, 0.0, 0, 1),
        (0, 10.0, 0, 40),  # 10/s * 2 s + 20
        (5, 10.0, 0, 35),
        (0, 0.1, 0, 21),  # a fraction of a unit per horizon rounds up
        (5, 0.0, 100, 95),  # an order needing more than the target
        (30, 10.0, 35, 10),  # target (40) beats needed (35)
    ],
)
def test_ask_amount_table(available: int, rate: float, needed: int, expected: int) -> None:
    assert policy.ask_amount(RefillSettings(), available, rate, needed) == expected


@QUICK
@given(
    refill=refill_settings,
    available=st.integers(min_value=0, max_value=10**6),
    rate=rates,
    needed=st.integers(min_value=0, max_value=10**6),
)
def test_ask_amount_is_the_least_positive_amount_covering_need_and_target(
    refill: RefillSettings, available: int, rate: float, needed: int
) -> None:
    ask = policy.ask_amount(refill, available, rate, needed)
    # The demand over the horizon is a float; adding the buffer to it is done exactly.
    want: Fraction = max(Fraction(needed), Fraction(rate * refill.horizon_s) + refill.buffer)
    assert ask >= 1
    assert available + ask >= needed
    assert available + ask >= want
    if ask > 1:  # the least whole amount that covers both
        assert available + ask - 1 < math.ceil(want)


@QUICK
@given(
    refill=refill_settings,
    available=st.integers(min_value=0, max_value=MAX_AMOUNT),
    rate=st.floats(min_value=0.0, max_value=1e300),
    needed=st.integers(min_value=0, max_value=MAX_AMOUNT),
    last_grant=st.integers(min_value=0, max_value=MAX_AMOUNT),
)
def test_whatever_the_measured_rate_the_agent_sends_nothing_the_center_must_refuse(
    refill: RefillSettings, available: int, rate: float, needed: int, last_grant: int
) -> None:
    # Orders of 1.5e14 units a few times a second already put demand a minute past 2**53.
    assert 0 <= policy.demand_per_minute(rate) <= MAX_AMOUNT
    assert 1 <= policy.ask_amount(refill, available, rate, needed) <= MAX_AMOUNT
    assert 0 <= policy.low_water_mark(refill, last_grant, rate, 10.0) <= MAX_AMOUNT


def test_demand_of_huge_orders_is_capped_at_the_largest_amount() -> None:
    rate = 3 * 1.5e14  # three orders of 1.5e14 units a second

    assert policy.demand_per_minute(rate) == MAX_AMOUNT


@pytest.mark.parametrize(
    ("last_grant", "rate", "latency", "expected"),
    [
        (21, 0.0, 0.0, 20),  # the buffer is the floor
        (20, 0.0, 0.0, 5),  # ...unless the grant was no more than the buffer: an opening, a small budget's share
        (400, 0.0, 0.0, 100),  # a quarter of the last grant
        (401, 0.0, 0.0, 101),  # rounded up
        (0, 100.0, 0.5, 100),  # two round trips of demand
    ],
)
def test_low_water_mark_table(last_grant: int, rate: float, latency: float, expected: int) -> None:
    assert policy.low_water_mark(RefillSettings(), last_grant, rate, latency) == expected


@QUICK
@given(
    refill=refill_settings,
    last_grant=st.integers(min_value=0, max_value=10**6),
    rate=rates,
    latency=st.floats(min_value=0.0, max_value=10.0),
)
def test_low_water_mark_covers_each_term_and_no_more(
    refill: RefillSettings, last_grant: int, rate: float, latency: float
) -> None:
    mark = policy.low_water_mark(refill, last_grant, rate, latency)
    buffer = refill.buffer if last_grant > refill.buffer else 0
    terms = (refill.low_water_fraction * last_grant, buffer, rate * latency * 2)
    assert all(mark >= term for term in terms)
    assert mark - 1 < max(terms)


@QUICK
@given(
    refill=refill_settings,
    available=st.integers(min_value=0, max_value=10**6) | st.integers(min_value=0, max_value=MAX_AMOUNT),
    last_grant=st.integers(min_value=0, max_value=10**6) | st.integers(min_value=0, max_value=MAX_AMOUNT),
    rate=rates,
    latency=st.floats(min_value=0.0, max_value=10.0),
)
def test_what_is_surely_above_the_low_water_mark_is_at_or_above_it(
    refill: RefillSettings, available: int, last_grant: int, rate: float, latency: float
) -> None:
    """The order path's quick answer (no refill) never skips a refill the mark calls for."""
    if policy.surely_above_low_water(refill, available, last_grant, rate, latency):
        assert available >= policy.low_water_mark(refill, last_grant, rate, latency)


def test_an_allotment_well_above_the_mark_is_surely_above_it() -> None:
    mark = policy.low_water_mark(RefillSettings(), 1_000, 100.0, 0.05)
    assert policy.surely_above_low_water(RefillSettings(), mark + 2, 1_000, 100.0, 0.05)
    assert not policy.surely_above_low_water(RefillSettings(), mark - 1, 1_000, 100.0, 0.05)


@pytest.mark.parametrize(
    ("asked", "unallocated", "demand", "total", "expected"),
    [
        (10, 1_000, 60, 60, 10),  # plenty left: what was asked
        (50, 30, 0, 0, 30),  # capped at what is unallocated
        (10, 0, 60, 60, 0),  # nothing left
        (10, -5, 60, 60, 0),  # never negative
        (0, 1_000, 60, 60, 0),  # asked for nothing
        (-3, 1_000, 60, 60, 0),
        (100, 100, 3_000, 6_000, 25),  # contested: half of a half share
        (100, 100, 600, 6_000, 5),  # contested: follows demand
        (3, 100, 3_000, 6_000, 3),  # contested but asked little
        (100, 1, 3_000, 6_000, 1),  # the last unit still goes out
        (100, 100, 0, 6_000, 1),  # no demand measured while others have some: weighs as 1 a minute
        (100, 100, 0, 0, 100),  # no demand measured anywhere: nothing is contested
        (100, 100, 6_000, 6_000, 100),  # only the asker wants any: nothing is held back
    ],
)
def test_grant_amount_table(asked: int, unallocated: int, demand: int, total: int, expected: int) -> None:
    assert policy.grant_amount(asked, unallocated, demand, total, 2.0) == expected


asked_amounts = st.integers(min_value=-5, max_value=10**6)
unallocated_amounts = st.integers(min_value=-5, max_value=10**6)
demands = st.integers(min_value=0, max_value=10**6)
horizons = st.floats(min_value=0.1, max_value=60.0)


@QUICK
@given(
    asked=asked_amounts,
    unallocated=unallocated_amounts,
    demand=demands,
    others=demands,
    horizon=horizons,
)
def test_grant_amount_bounds(asked: int, unallocated: int, demand: int, others: int, horizon: float) -> None:
    total = demand + others
    granted = policy.grant_amount(asked, unallocated, demand, total, horizon)
    assert 0 <= granted <= max(asked, 0)
    assert granted <= max(unallocated, 0)
    assert (granted == 0) == (unallocated <= 0 or asked <= 0)
    need_for_two_horizons = 2 * total * horizon / 60
    if unallocated < need_for_two_horizons and others:  # contested: at most half of what is left
        assert granted <= max(1, unallocated // 2)
    if unallocated >= need_for_two_horizons + 2 or not others:  # uncontested: what it asks, capped
        assert granted == min(max(asked, 0), max(unallocated, 0))


@QUICK
@given(
    asked=st.integers(min_value=1, max_value=10**6),
    unallocated=st.integers(min_value=1, max_value=10**6),
    demand=demands,
    others=demands,
    extra=st.integers(min_value=1, max_value=10**6),
    horizon=horizons,
)
def test_grant_amount_shrinks_as_others_want_more(
    asked: int, unallocated: int, demand: int, others: int, extra: int, horizon: float
) -> None:
    calm = policy.grant_amount(asked, unallocated, demand, demand + others, horizon)
    busier = policy.grant_amount(asked, unallocated, demand, demand + others + extra, horizon)
    assert busier <= calm


@QUICK
@given(
    asked=st.integers(min_value=1, max_value=10**6),
    unallocated=st.integers(min_value=1, max_value=10**6),
    demands_=st.lists(st.integers(min_value=1, max_value=10**6), min_size=3, max_size=3),
    horizon=horizons,
)
def test_grant_amount_follows_demand(asked: int, unallocated: int, demands_: list[int], horizon: float) -> None:
    low, high, total = sorted(demands_)
    assert policy.grant_amount(asked, unallocated, low, total, horizon) <= policy.grant_amount(
        asked, unallocated, high, total, horizon
    )


@QUICK
@given(
    asked=st.integers(min_value=1, max_value=10_000),
    unallocated=st.integers(min_value=0, max_value=400),
    demand=demands,
    others=demands,
)
def test_repeated_grants_sell_out_exactly(asked: int, unallocated: int, demand: int, others: int) -> None:
    left = unallocated
    rounds = 0
    while left > 0:
        granted = policy.grant_amount(asked, left, demand, demand + others, 2.0)
        assert 1 <= granted <= left
        left -= granted
        rounds += 1
    assert left == 0
    assert rounds <= unallocated
    assert policy.grant_amount(asked, 0, demand, demand + others, 2.0) == 0


@pytest.mark.parametrize(
    ("held", "demand", "others", "unallocated", "expected"),
    [
        (100, 0, 600, 20, 0),  # others want 20 at a 2 s horizon: the center has it
        (100, 60, 6_000, 10, 96),  # others want 200: keep two horizons (4), give the rest
        (3, 60, 6_000, 10, 0),  # holds less than it needs itself
        (100, 0, 600, 15, 5),  # others lack only 5: give back 5, not the idle 100
        (0, 0, 6_000, 0, 0),
    ],
)
def test_reclaim_amount_table(held: int, demand: int, others: int, unallocated: int, expected: int) -> None:
    assert policy.reclaim_amount(held, demand, others, unallocated, 2.0) == expected


@QUICK
@given(
    held=st.integers(min_value=-5, max_value=10**6),
    demand=demands,
    others=demands,
    unallocated=st.integers(min_value=0, max_value=10**6),
    horizon=horizons,
)
def test_reclaim_amount_bounds(held: int, demand: int, others: int, unallocated: int, horizon: float) -> None:
    reclaim = policy.reclaim_amount(held, demand, others, unallocated, horizon)
    assert 0 <= reclaim <= max(held, 0)
    if others * horizon / 60 <= unallocated:
        assert reclaim == 0
    if reclaim:
        assert held - reclaim >= 2 * demand * horizon / 60  # the region keeps two horizons of its own demand
        assert reclaim <= math.ceil(others * horizon / 60) - unallocated  # and gives only what others lack


# Pacing


@pytest.mark.parametrize(
    ("pacing", "cap", "now_ms", "expected"),
    [
        (Pacing.NONE, 0, -HOUR_MS, 1_000),  # everything, even before the start
        (Pacing.LINEAR, 0, -1, 0),  # nothing before the window
        (Pacing.LINEAR, 0, HOUR_MS, 250),  # a quarter of a four-hour window
        (Pacing.LINEAR, 0, 4 * HOUR_MS, 1_000),  # everything at the end
        (Pacing.LINEAR, 0, 9 * HOUR_MS, 1_000),
        (Pacing.HOURLY_CAP, 300, 0, 300),  # the first hour's cap at the start
        (Pacing.HOURLY_CAP, 300, 2 * HOUR_MS - 1, 600),  # what an hour leaves, the next may use
        (Pacing.HOURLY_CAP, 300, 3 * HOUR_MS, 1_000),  # never more than the budget
    ],
)
def test_released_amount_table(pacing: Pacing, cap: int, now_ms: int, expected: int) -> None:
    assert policy.released_amount(1_000, 0, 4 * HOUR_MS, now_ms, pacing, cap) == expected


@QUICK
@given(
    budget=st.integers(min_value=1, max_value=2**53 - 1),
    window=st.integers(min_value=1, max_value=30 * 24 * HOUR_MS),
    times=st.lists(st.integers(min_value=-HOUR_MS, max_value=31 * 24 * HOUR_MS), min_size=2, max_size=10),
    pacing=st.sampled_from(list(Pacing)),
    cap=st.integers(min_value=1, max_value=2**53 - 1),
)
def test_released_amount_grows_with_time_up_to_the_budget(
    budget: int, window: int, times: list[int], pacing: Pacing, cap: int
) -> None:
    released = [policy.released_amount(budget, 0, window, now, pacing, cap) for now in sorted(times)]
    assert all(0 <= amount <= budget for amount in released)
    assert released == sorted(released)
    assert policy.released_amount(budget, 0, window, window, pacing, cap) == (
        budget if pacing is not Pacing.HOURLY_CAP else min(budget, cap * (window // HOUR_MS + 1))
    )


@given(
    st.lists(st.tuples(st.integers(1, MAX_AMOUNT), st.floats(0, 5)), min_size=1, max_size=20),
    st.floats(0, 100),
    st.integers(0, MAX_AMOUNT),
    st.floats(0.001, 10),
)
def test_a_mark_worked_out_from_the_meters_peak_is_never_below_the_mark_now(
    observed: list[tuple[int, float]], later_s: float, last_grant: int, latency: float
) -> None:
    """The agent skips the exact mark when what is left reaches the mark at the peak rate: exact only because
    no rate after the last observation is above that peak, and the mark never falls as the rate grows."""
    meter, now = RateMeter(), 0.0
    for amount, gap_s in observed:
        now += gap_s
        meter.observe(amount, now)
    refill = RefillSettings()
    assert meter.rate(now + later_s) <= meter.peak
    assert policy.low_water_mark(refill, last_grant, meter.rate(now + later_s), latency) <= policy.low_water_mark(
        refill, last_grant, meter.peak, latency
    )
