"""The agent's budget of lookups of unheard-of promotions: a burst, then a steady rate, never more; spent all
or nothing, and given back by lookups that found their promotion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_common.errors import LookupsSpent
from region_agent.lookups import LookupBudget


def _granted(budget: LookupBudget, count: int, now: float) -> bool:
    try:
        budget.spend([f"p-{n}" for n in range(count)], now)
    except LookupsSpent:
        return False
    return True


def test_a_burst_then_one_lookup_per_refill_and_never_more_than_a_burst_saved() -> None:
    budget = LookupBudget(per_s=10, burst=3, now=0.0)

    assert [_granted(budget, 1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not _granted(budget, 1, 0.05)  # half a lookup earned
    assert _granted(budget, 1, 0.1)
    assert [_granted(budget, 1, 3600.0) for _ in range(4)] == [True, True, True, False]  # an idle hour: a burst


def test_an_order_short_of_lookups_spends_none_and_says_when_it_may_retry() -> None:
    budget = LookupBudget(per_s=10, burst=5, now=0.0)
    budget.spend(["a", "b", "c"], 0.0)

    with pytest.raises(LookupsSpent) as short:
        budget.spend(["d", "e", "f"], 0.0)

    assert short.value.promotion_id == "d"
    assert short.value.retry_after_s == pytest.approx(0.1)  # one lookup short, at ten a second
    assert _granted(budget, 2, 0.0)  # the refused order took none of the two left


def test_lookups_that_found_their_promotion_are_given_back_up_to_a_burst() -> None:
    budget = LookupBudget(per_s=1, burst=2, now=0.0)
    budget.spend(["a", "b"], 0.0)

    budget.give_back(5)

    assert _granted(budget, 2, 0.0)
    assert not _granted(budget, 1, 0.0)


@given(st.lists(st.tuples(st.floats(min_value=0, max_value=5, allow_nan=False), st.integers(1, 30)), max_size=200))
def test_lookups_spent_never_exceed_the_burst_plus_the_rate_over_the_time_elapsed(
    steps: list[tuple[float, int]],
) -> None:
    budget = LookupBudget(per_s=20, burst=100, now=0.0)
    now, spent = 0.0, 0
    for step, count in steps:
        now += step
        spent += count if _granted(budget, count, now) else 0

    assert spent <= 100 + 20 * now
