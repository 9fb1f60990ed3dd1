"""A region is held by the ledger life that renews its leases: a Join from another ledger (an agent started
without the region's --ledger, a second in-process agent) is refused until that lease runs out, so it cannot
write off what a live process holds; a ledger that lost its data names the life it replaces and joins at once."""

from __future__ import annotations

import pytest

from quota_center.center import Center
from quota_common.clock import FakeClock
from quota_common.errors import RegionHeld
from quota_common.model import Kind, Promotion, Report
from quota_testing.memory_store import MemoryStore

NOW_MS = 1_700_000_000_000
TTL_S = 10.0


async def _serving(store: MemoryStore | None = None, clock: FakeClock | None = None) -> tuple[Center, str]:
    """A center selling "p" in eu, whose life `held` took quota (so it holds the region)."""
    center = Center(store or MemoryStore(), clock or FakeClock(NOW_MS))
    await center.start()
    await center.create_promotion(Promotion("p", Kind.COUNT, "", 1_000, NOW_MS - 1, NOW_MS + 3_600_000, ("eu", "us")))
    held = center.join("eu")
    await center.acquire("eu", held, "p", 10, "r-1", 0)
    return center, held


async def test_a_join_while_another_life_renews_is_refused_with_the_time_its_lease_has_left() -> None:
    clock = FakeClock(NOW_MS)
    center, held = await _serving(clock=clock)
    clock.advance(4)

    with pytest.raises(RegionHeld) as refused:
        center.join("eu")

    assert refused.value.retry_after_s == pytest.approx(TTL_S - 4)
    assert f"served by another agent, as ledger incarnation {held}" in refused.value.message
    assert "renewed 4.0 s ago" in refused.value.message
    await center.renew("eu", held, {"p": Report(granted=10, returned=0, deducted=0, refunded=0)})
    with pytest.raises(RegionHeld) as again:
        center.join("eu")
    assert again.value.retry_after_s == pytest.approx(TTL_S)  # a renewal holds it a whole lease more


async def test_once_the_lease_ran_out_a_join_gets_a_new_life() -> None:
    clock = FakeClock(NOW_MS)
    center, held = await _serving(clock=clock)

    clock.advance(TTL_S)

    assert center.join("eu") > held


async def test_a_ledger_that_lost_its_data_joins_at_once_naming_the_life_it_held() -> None:
    center, held = await _serving()

    assert center.join("eu", replaces=held) > held
    with pytest.raises(RegionHeld):
        center.join("eu", replaces="01700000000000000000-000000000000")  # names a life that holds nothing


async def test_a_join_holds_the_region_so_of_two_processes_started_at_once_one_joins() -> None:
    center = Center(MemoryStore(), FakeClock(NOW_MS))
    await center.start()

    first = center.join("eu")
    with pytest.raises(RegionHeld) as refused:
        center.join("eu")

    assert first in refused.value.message


async def test_the_regions_agents_that_saw_one_life_end_all_join() -> None:
    """Each agent of a Redis that came back empty names the life it held; the first to store its new life in
    Redis wins, and the others take that one up."""
    center, lost = await _serving()

    lives = [center.join("eu", replaces=lost) for _ in range(3)]

    assert len(set(lives)) == 3
    with pytest.raises(RegionHeld):
        center.join("eu")


async def test_other_regions_are_not_held() -> None:
    center, _ = await _serving()

    assert center.join("us")


async def test_a_new_leader_counts_the_lives_it_finds_as_holding_for_one_lease() -> None:
    """Their agents renewed with the old leader; they may be serving still."""
    store, clock = MemoryStore(), FakeClock(NOW_MS)
    _, held = await _serving(store, clock)
    leader = Center(store, clock)
    await leader.start()

    with pytest.raises(RegionHeld) as refused:
        leader.join("eu")
    assert refused.value.retry_after_s == pytest.approx(TTL_S)

    clock.advance(TTL_S)
    assert leader.join("eu") > held


async def test_an_older_life_does_not_take_the_region_back_from_a_newer_one_that_renews() -> None:
    clock = FakeClock(NOW_MS)
    center, older = await _serving(clock=clock)
    newer = center.join("eu", replaces=older)
    await center.renew("eu", newer, {})
    clock.advance(1)

    await center.renew("eu", older, {})  # not superseded yet: the newer life has reported nothing

    with pytest.raises(RegionHeld) as refused:
        center.join("eu")
    assert newer in refused.value.message


async def test_the_last_renewal_of_a_leaving_process_lets_the_next_join_at_once() -> None:
    center, held = await _serving()

    await center.renew_region("eu", held, {}, catalog_revision=0, full=False, leaving=True)

    assert center.join("eu") > held


async def test_a_leaving_life_that_does_not_hold_the_region_releases_nothing() -> None:
    center, older = await _serving()
    newer = center.join("eu", replaces=older)
    await center.renew_region("eu", newer, {}, catalog_revision=0, full=False)

    await center.renew_region("eu", older, {}, catalog_revision=0, full=False, leaving=True)

    with pytest.raises(RegionHeld):
        center.join("eu")
