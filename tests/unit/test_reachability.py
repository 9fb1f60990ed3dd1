"""What the renew loop says about the center going away and coming back: once each, with the time."""

from __future__ import annotations

from quota_common.clock import FakeClock
from region_agent.reachability import Reachability


def test_an_outage_is_said_once_when_it_starts_and_once_when_it_ends_with_its_length() -> None:
    clock = FakeClock(wall_ms=1_700_000_000_000)
    reachability = Reachability(clock)

    assert reachability.answered() is None
    lost = reachability.failed("failed to connect to all addresses")
    clock.advance(41.5)
    repeats = [reachability.failed("failed to connect to all addresses") for _ in range(100)]
    lost_for_s = reachability.lost_for_s()  # from the first failure, not the last
    back = reachability.answered()

    assert lost is not None
    assert lost.startswith("lost the center at 2023-11-14T22:13:20+00:00 (failed to connect to all addresses)")
    assert repeats == [None] * 100
    assert back == "the center is back after 41.5 s"
    assert lost_for_s == 41.5
    assert not reachability.lost
    assert reachability.lost_for_s() == 0
    assert reachability.answered() is None
