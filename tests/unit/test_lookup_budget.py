"""The agent's budget of lookups of unheard-of promotions: a burst, then a steady rate, never more."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from region_agent.lookups import LookupBudget


def test_a_burst_then_one_lookup_per_refill_and_never_more_than_a_burst_saved() -> None:
    budget = LookupBudget(per_s=10, burst=3, now=0.0)

    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(0.05) is False  # half a lookup earned
    assert budget.take(0.1) is True
    assert [budget.take(3600.0) for _ in range(4)] == [True, True, True, False]  # an idle hour saves a burst


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=200))
def test_lookups_taken_never_exceed_the_burst_plus_the_rate_over_the_time_elapsed(steps: list[float]) -> None:
    budget = LookupBudget(per_s=20, burst=100, now=0.0)
    now, taken = 0.0, 0
    for step in steps:
        now += step
        taken += sum(budget.take(now) for _ in range(30))

    assert taken <= 100 + 20 * now
