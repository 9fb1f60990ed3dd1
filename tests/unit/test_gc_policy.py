"""The garbage-collection policy of a serving process: set as said, and every collection's length shown."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from quota_common import gc_policy


@pytest.fixture
def restored() -> Iterator[None]:
    """The policy is process-wide: the test process gets its own back."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks


@pytest.mark.usefixtures("restored")
@pytest.mark.parametrize("thresholds", [gc_policy.CENTER_THRESHOLDS, gc_policy.AGENT_THRESHOLDS])
def test_a_serving_process_collects_as_its_role_needs_and_shows_each_collections_length(
    thresholds: tuple[int, int, int],
) -> None:
    registry = CollectorRegistry()
    gc_policy.serving(registry, thresholds)
    before = registry.get_sample_value("python_gc_pause_seconds_count", {"generation": "2"}) or 0

    gc.collect()

    assert gc.get_threshold() == thresholds
    assert registry.get_sample_value("python_gc_pause_seconds_count", {"generation": "2"}) == before + 1


@pytest.mark.usefixtures("restored")
def test_a_settled_state_is_frozen_and_given_back_when_unsettled() -> None:
    registry = CollectorRegistry()
    gc_policy.serving(registry, gc_policy.CENTER_THRESHOLDS)
    state = [{"account": n} for n in range(100)]

    gc_policy.settled()
    frozen = registry.get_sample_value("python_gc_frozen_objects")
    gc_policy.unsettled()

    assert frozen is not None
    assert frozen > len(state)
    assert registry.get_sample_value("python_gc_frozen_objects") == 0


@pytest.mark.usefixtures("restored")
def test_a_settled_leader_freezes_what_survives_a_full_collection_until_unsettled() -> None:
    registry = CollectorRegistry()
    gc_policy.serving(registry, gc_policy.CENTER_THRESHOLDS)
    gc_policy.settled()
    frozen_at_load = gc.get_freeze_count()
    grown = [[n] for n in range(1_000)]  # lists stay tracked (a dict of ints would not)

    gc.collect()
    after_growth = gc.get_freeze_count()
    gc_policy.unsettled()
    gc.collect()

    assert after_growth >= frozen_at_load + len(grown)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restored")
def test_a_started_agent_is_frozen_once_and_not_again_after_a_full_collection() -> None:
    """An agent always has calls to the center in flight: frozen at a later full collection, those that end as
    reference cycles (tenacity's retrying object) would never be freed."""
    registry = CollectorRegistry()
    gc_policy.serving(registry, gc_policy.AGENT_THRESHOLDS)
    gc_policy.started()
    frozen_at_start = gc.get_freeze_count()
    in_flight = [[n] for n in range(1_000)]

    gc.collect()

    assert frozen_at_start > 0
    assert gc.get_freeze_count() <= frozen_at_start
    assert all(gc.is_tracked(call) for call in in_flight)
