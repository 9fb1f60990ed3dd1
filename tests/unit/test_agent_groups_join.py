"""Joining a ledger life in front of several center groups: the group that answers knows only the earlier
lives that held its own promotions, so the agent must not take its "no earlier life" as the region's."""

from __future__ import annotations

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.issuer import KEY_DOCUMENT
from quota_common.clock import FakeClock
from quota_testing.direct_center import DirectCenter
from quota_testing.inprocess import TEST_INCARNATION_KEY
from quota_testing.memory_store import MemoryStore
from region_agent.center_groups import CenterGroups


async def _port(clock: FakeClock, group: str) -> DirectCenter:
    store = MemoryStore()
    await store.save_document(KEY_DOCUMENT, {"key": TEST_INCARNATION_KEY.hex()})
    center = Center(store, clock, CenterSettings(group=group))
    await center.start()
    return DirectCenter(center, "eu", clock)


async def test_one_group_answers_for_the_region() -> None:
    clock = FakeClock()
    joined = await CenterGroups.one(await _port(clock, "default")).join("")
    assert not joined.after_earlier_life, "a first life: an unknown order key is unknown, not lost"


async def test_several_groups_assume_an_earlier_life() -> None:
    clock = FakeClock()
    groups = CenterGroups({"default": await _port(clock, "default"), "g1": await _port(clock, "g1")})
    joined = await groups.join("")
    assert joined.incarnation
    assert joined.after_earlier_life, "g1 may have served a lost life's orders that the default group never saw"
