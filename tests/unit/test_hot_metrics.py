"""The order path's counter and histogram expose what prometheus_client's would for the same observations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from quota_common.hot_metrics import HotCounter, HotHistogram
from quota_common.rpc_metrics import LATENCY_BUCKETS_S

LABELS = ["region", "operation"]
SERIES = st.sampled_from([("eu", "deduct"), ("eu", "reserve"), ("us", "deduct")])


def _page(registry: CollectorRegistry) -> list[str]:
    """The exposition without the _created samples, which only prometheus_client's families carry."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@given(st.lists(st.tuples(SERIES, st.floats(0, 10) | st.sampled_from(LATENCY_BUCKETS_S)), max_size=50))
def test_the_page_is_prometheus_clients_page(observations: list[tuple[tuple[str, str], float]]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("quota_answers", "Answers.", LABELS, registry=theirs)
    histogram = Histogram("quota_answer_seconds", "Time.", LABELS, buckets=LATENCY_BUCKETS_S, registry=theirs)
    hot_counter = HotCounter("quota_answers", "Answers.", LABELS)
    hot_histogram = HotHistogram("quota_answer_seconds", "Time.", LABELS, LATENCY_BUCKETS_S)
    ours.register(hot_counter)
    ours.register(hot_histogram)
    for labels, seconds in observations:
        counter.labels(*labels).inc()
        histogram.labels(*labels).observe(seconds)
        hot_counter.inc(labels)
        hot_histogram.observe(labels, seconds)

    assert sorted(_page(ours)) == sorted(_page(theirs))


def test_a_registry_refuses_a_second_series_of_the_same_name() -> None:
    """As it refuses a second prometheus_client Counter or Histogram: two collectors of one family would
    otherwise both be on the page."""
    registry = CollectorRegistry()
    registry.register(HotCounter("quota_answers", "Answers.", LABELS))
    registry.register(HotHistogram("quota_answer_seconds", "Time.", LABELS, LATENCY_BUCKETS_S))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(HotCounter("quota_answers", "Answers.", LABELS))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(HotHistogram("quota_answer_seconds", "Time.", LABELS, LATENCY_BUCKETS_S))
