"""The center as the one source of ledger incarnations, and its admin writes when the store's answer is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quota_center.audit import AuditRecord, verify
from quota_center.center import Center
from quota_common.clock import FakeClock
from quota_common.errors import InvalidArgument, Unavailable
from quota_common.incarnation import issue_incarnation, new_incarnation, started_ns
from quota_common.model import EMERGENCY_DOCUMENT, EmergencyFreeze, Kind, Promotion
from quota_testing.memory_store import MemoryStore
from region_agent.ledger.base import Joined
from region_agent.ledger.memory import InProcessLedger

NOW_MS = 1_700_000_000_000


def _promotion(promotion_id: str = "p") -> Promotion:
    return Promotion(promotion_id, Kind.COUNT, "", 1_000, NOW_MS - 1, NOW_MS + 3_600_000, ("eu", "us"))


async def _leading(store: MemoryStore, wall_ms: int = NOW_MS) -> Center:
    center = Center(store, FakeClock(wall_ms))
    await center.start()
    return center


async def test_joins_of_one_region_get_distinct_lives_each_newer_than_the_region_had() -> None:
    center = await _leading(MemoryStore())
    await center.create_promotion(_promotion())
    lives: list[str] = []
    for _ in range(50):
        # Each joined by a ledger that lost the life before: a Join holds the region for the life it issues.
        lives.append(center.join("eu", lives[-1] if lives else ""))

    assert len(set(lives)) == 50
    assert lives == sorted(lives)
    assert all(center.require_issued("eu", life) == life for life in lives)


async def test_two_leaders_one_after_the_other_never_issue_one_life_twice() -> None:
    """A region's newest life dated ahead of both leaders' clocks (skew) leaves them one floor to start from."""
    store = MemoryStore()
    first = await _leading(store)
    await first.create_promotion(_promotion())
    ahead = first.join("eu")
    await first.acquire("eu", ahead, "p", 10, "r-1", 0)
    later_clock_behind = started_ns(ahead) // 1_000_000 - 60_000

    # Naming `ahead` as the life replaced, as an agent whose Redis lost its data does: each new leader takes
    # the region as held by it.
    issued = {(await _leading(store, later_clock_behind)).join("eu", ahead) for _ in range(20)}

    assert len(issued) == 20
    assert all(life > ahead for life in issued)


async def test_an_incarnation_the_center_did_not_issue_to_the_region_is_refused() -> None:
    center = await _leading(MemoryStore())
    for forged in (new_incarnation(NOW_MS * 1_000_000), issue_incarnation(NOW_MS * 1_000_000, "eu", b"other key")):
        with pytest.raises(InvalidArgument, match="was not issued to region eu"):
            center.require_issued("eu", forged)
    with pytest.raises(InvalidArgument):
        center.require_issued("us", center.join("eu"))


async def test_a_new_leader_issues_under_the_same_key() -> None:
    store = MemoryStore()
    life = (await _leading(store)).join("eu")

    assert (await _leading(store)).require_issued("eu", life) == life


async def test_an_in_process_ledger_joined_by_several_callers_at_once_keeps_one_life() -> None:
    ledger = InProcessLedger()
    answers = iter(["first", "second", "third"])

    async def issue(replaces: str) -> Joined:
        await asyncio.sleep(0)
        return Joined(next(answers))

    lives = await asyncio.gather(*(ledger.incarnation(issue) for _ in range(3)))

    assert set(lives) == {"first"}
    assert await ledger.incarnation(issue) == "first"


class LostAnswers(MemoryStore):
    """Writes land, then the answer is lost (etcd's reply never arrives)."""

    losing = False

    async def save_document(self, name: str, document: dict[str, Any], audit: AuditRecord | None = None) -> None:
        await super().save_document(name, document, audit)
        if self.losing:
            raise Unavailable("etcd: the answer was lost")


async def test_a_switch_whose_answer_was_lost_is_enforced_as_stored_and_the_trail_goes_on() -> None:
    store = LostAnswers()
    center = await _leading(store)
    store.losing = True

    with pytest.raises(Unavailable):
        await center.set_emergency_freeze("", True)
    store.losing = False

    stored = await store.load_document(EMERGENCY_DOCUMENT)
    assert stored is not None
    assert EmergencyFreeze.from_document(stored).everywhere
    assert center.emergency.everywhere
    await center.set_emergency_freeze("", False)
    records = await store.audit_records()
    assert [record.fields()["after"]["everywhere"] for record in records] == [True, False]
    assert verify(records) == []
