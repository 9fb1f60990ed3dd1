"""Paced promotions: the center never grants beyond what the release curve allows by now, and a
region that asks while released quota is unallocated always gets some."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_center import allocation
from quota_center.ledger import PromotionState
from quota_common.errors import Exhausted
from quota_common.model import Kind, Promotion
from quota_common.policy import HOUR_MS, Pacing, released_amount

REGIONS = ("eu", "us", "ap")
WINDOW_MS = 4 * HOUR_MS


def paced(pacing: Pacing, budget: int, cap: int = 0) -> PromotionState:
    return PromotionState(Promotion("p", Kind.COUNT, "", budget, 0, WINDOW_MS, REGIONS, pacing=pacing, hourly_cap=cap))


def test_a_linear_promotion_grants_a_quarter_after_a_quarter_of_its_window() -> None:
    state = paced(Pacing.LINEAR, 1_000)
    demands = dict.fromkeys(REGIONS, 600)

    record = allocation.grant(state, "eu", "i", 10_000, ("g1", "r1"), demands, 2.0, now_ms=HOUR_MS)
    with pytest.raises(Exhausted, match="paced"):
        allocation.grant(state, "us", "i", 10_000, ("g2", "r2"), demands, 2.0, now_ms=HOUR_MS)

    assert record.amount <= 250
    assert state.unallocated == 1_000 - record.amount


def test_idle_quota_comes_back_while_pacing_holds_the_rest() -> None:
    state = paced(Pacing.HOURLY_CAP, 10_000, cap=100)
    allocation.grant(state, "eu", "i", 100, ("g1", "r1"), dict.fromkeys(REGIONS, 0), 2.0, now_ms=0)
    demands = {"eu": 0, "us": 600, "ap": 0}
    with pytest.raises(Exhausted, match="paced"):
        allocation.grant(state, "us", "i", 50, ("g2", "r2"), demands, 2.0, now_ms=0)

    assert allocation.reclaim(state, "eu", demands, 2.0, now_ms=0) > 0


steps = st.lists(
    st.tuples(st.integers(0, HOUR_MS // 2), st.sampled_from(REGIONS), st.integers(1, 5_000), st.integers(0, 6_000)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pacing=st.sampled_from([Pacing.LINEAR, Pacing.HOURLY_CAP]),
    budget=st.integers(1, 20_000),
    cap=st.integers(1, 5_000),
    steps=steps,
)
def test_grants_never_run_ahead_of_the_release_curve(
    pacing: Pacing, budget: int, cap: int, steps: list[tuple[int, str, int, int]]
) -> None:
    state = paced(pacing, budget, cap if pacing is Pacing.HOURLY_CAP else 0)
    now_ms, demands = 0, dict.fromkeys(REGIONS, 0)
    for number, (wait_ms, region, asked, demand) in enumerate(steps):
        now_ms += wait_ms
        demands[region] = demand
        could_grant = state.grantable(now_ms)
        try:
            record = allocation.grant(state, region, "i", asked, (f"g{number}", f"r{number}"), demands, 2.0, now_ms)
        except Exhausted:
            assert could_grant == 0
        else:
            assert 1 <= record.amount <= could_grant
        allocated = budget - state.unallocated
        assert allocated <= released_amount(budget, 0, WINDOW_MS, now_ms, pacing, state.promotion.hourly_cap)
