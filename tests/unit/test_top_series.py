"""Which promotions keep series of their own on a /metrics page, pure: however many promotions there are,
the page shows at most the top N by spend and the ones that must show, and the folded rest keeps every
sum right."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import GaugeMetricFamily

from quota_common.top_series import REST, Folding, Series, select, shown_as

promotion_ids = st.text(min_size=1, max_size=6)
spends = st.dictionaries(promotion_ids, st.integers(0, 10**6), max_size=60)


@given(spends, st.integers(0, 20), st.sets(promotion_ids, max_size=10))
def test_at_most_top_n_and_the_promotions_that_must_show_are_shown(
    spend: dict[str, int], top: int, always: set[str]
) -> None:
    shown = select(spend, top, always)

    assert len(shown) <= top + len(always)
    assert shown <= spend.keys()
    assert always & spend.keys() <= shown
    assert len(shown) >= min(top, len(spend))


@given(spends, st.integers(0, 20))
def test_no_promotion_left_out_spent_more_than_one_shown(spend: dict[str, int], top: int) -> None:
    shown = select(spend, top)

    left_out = spend.keys() - shown
    if shown and left_out:
        assert min(spend[promotion] for promotion in shown) >= max(spend[promotion] for promotion in left_out)


def test_equal_spends_pick_the_same_promotions_whatever_the_order_they_come_in() -> None:
    spend = {f"p{number}": 5 for number in range(100)}

    assert select(spend, 3) == select(dict(reversed(spend.items())), 3) == {"p0", "p1", "p10"}


def test_a_promotion_that_falls_out_of_the_top_n_loses_its_series() -> None:
    assert select({"a": 10, "b": 5, "c": 1}, 2) == {"a", "b"}
    assert select({"a": 10, "b": 5, "c": 7}, 2) == {"a", "c"}


rows = st.lists(st.tuples(promotion_ids, st.sampled_from(["eu", "us", "ap"]), st.integers(0, 10**9)), max_size=200)


@given(rows, st.integers(0, 10), st.sets(promotion_ids, max_size=5))
def test_the_folded_series_are_bounded_and_sum_to_the_totals(
    samples: list[tuple[str, str, int]], top: int, always: set[str]
) -> None:
    spend: dict[str, int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    for promotion, region, value in samples:
        spend[promotion] += value
        totals[region] += value
    shown = select(spend, top, always)
    rows = [((shown_as(promotion, shown), region), value) for promotion, region, value in samples]

    folding = Folding([Series(GaugeMetricFamily, "spent", "", lambda value: value)], ["promotion", "region"])
    for batch in (rows[:7], rows[7:]):
        folding.add(batch)

    (family,) = folding.families()

    series = {(sample.labels["promotion"], sample.labels["region"]): sample.value for sample in family.samples}
    assert len(series) <= (top + len(always) + 1) * 3
    folded: dict[str, float] = defaultdict(float)
    for (_, region), summed in series.items():
        folded[region] += summed
    assert folded == totals
    assert {promotion for promotion, _ in series} <= shown | {REST}


def test_a_folded_series_keeps_the_oldest_when_told_to_and_skips_rows_without_a_value() -> None:
    ages = Series(GaugeMetricFamily, "age", "", lambda age: age, max)
    rows = [((REST, "eu"), 3.0), ((REST, "eu"), 9.5), ((REST, "eu"), None), ((REST, "us"), None)]

    folding = Folding([ages], ["promotion", "region"])
    folding.add(rows[:1])
    folding.add(rows[1:])

    (family,) = folding.families()

    assert [(sample.labels, sample.value) for sample in family.samples] == [({"promotion": REST, "region": "eu"}, 9.5)]
