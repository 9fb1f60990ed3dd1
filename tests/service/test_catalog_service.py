"""The center's catalog over a real SQLite store: one revision counter for every configuration
change, pages an agent can resume from, a restart that rebuilds it all, the emergency switch,
and opening allotments for many promotions at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.center_agents import CatalogPage, Opening
from quota_center.ledger import GrantRecord
from quota_center.store.base import Commit
from quota_center.store.sqlite import SqliteStore
from quota_common.clock import FakeClock
from quota_common.errors import Exhausted, FailedPrecondition, NotFound, PermissionDenied
from quota_common.model import Kind, Promotion


def _promotion(promotion_id: str, budget: int = 100, regions: tuple[str, ...] = ("eu", "us")) -> Promotion:
    return Promotion(promotion_id, Kind.COUNT, "", budget, 0, 10**13, regions)


class Restarts:
    """Starts a center on one SQLite file, again and again, as a process restart would."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.stores: list[SqliteStore] = []

    @property
    def store(self) -> SqliteStore:
        return self.stores[-1]

    async def start(self) -> Center:
        if self.stores:
            await self.store.close()
        self.stores.append(SqliteStore(self._path))
        center = Center(self.store, FakeClock())
        await center.start()
        return center


@pytest.fixture
async def restarts(tmp_path: Path) -> AsyncIterator[Restarts]:
    made = Restarts(tmp_path / "center.db")
    yield made
    for store in made.stores:
        await store.close()


@pytest.fixture
async def center(restarts: Restarts) -> Center:
    return await restarts.start()


def _revision(center: Center) -> int:
    return center.catalog_page("eu", 0, 1000).revision


async def test_every_configuration_change_takes_the_next_global_revision(center: Center) -> None:
    assert (await center.create_promotion(_promotion("a"))).revision == 1
    assert (await center.create_promotion(_promotion("b"))).revision == 2
    assert (await center.set_budget("a", 50, expected_revision=1)).revision == 3
    assert (await center.set_frozen("b", True)).revision == 4
    assert (await center.set_frozen("b", True)).revision == 4  # already frozen: no new revision
    assert (await center.set_emergency_freeze("eu", True)).revision == 5
    assert (await center.set_emergency_freeze("eu", True)).revision == 5  # already on: no new revision
    assert (await center.set_emergency_freeze("", False)).revision == 5  # nothing was frozen everywhere
    assert _revision(center) == 5
    assert (await center.create_promotion(_promotion("c"))).revision == 6
    assert (await center.set_emergency_freeze("eu", False)).revision == 7
    assert (await center.set_frozen("b", False)).revision == 8

    assert [(p.id, p.revision) for p in center.catalog_page("eu", 0, 10).promotions] == [("a", 3), ("c", 6), ("b", 8)]
    assert center.catalog_page("us", 0, 10).revision == 8


async def test_pages_filter_by_region_and_resume_without_gaps_or_repeats(center: Center) -> None:
    regions = [("eu",), ("us",), ("eu", "us")]
    for n in range(25):
        await center.create_promotion(_promotion(f"p{n:02d}", regions=regions[n % 3]))
    cursor, seen, pages = 0, list[Promotion](), 0
    while True:
        page = center.catalog_page("eu", cursor, 7)
        pages += 1
        assert len(page.promotions) <= 7
        assert page.revision > cursor or not page.promotions
        seen += page.promotions
        cursor = page.revision
        if pages == 1:  # changes made while the agent pages through come later, newest version
            await center.set_budget("p00", 60, expected_revision=1)
            await center.create_promotion(_promotion("late", regions=("eu",)))
        if not page.more:
            break

    eu = [p for p in center.promotions() if "eu" in p.regions]
    assert pages == 3
    assert [p.revision for p in seen] == sorted(p.revision for p in seen)
    assert {p.id: p for p in seen} == {p.id: p for p in eu}
    assert [p.id for p in seen].count("p00") == 2  # its first version, then its change
    assert len(seen) == len(eu) + 1
    assert cursor == 27
    last = center.catalog_page("eu", cursor, 7)
    assert (last.promotions, last.revision, last.more) == ([], 27, False)


async def test_a_full_last_page_says_there_is_no_more(center: Center) -> None:
    for n in range(7):
        await center.create_promotion(_promotion(f"p{n}", regions=("eu",)))
    await center.create_promotion(_promotion("us-only", regions=("us",)))

    page = center.catalog_page("eu", 0, 7)

    assert (len(page.promotions), page.more, page.revision) == (7, False, 8)


async def test_a_restarted_center_rebuilds_revisions_and_the_emergency_switch(restarts: Restarts) -> None:
    center = await restarts.start()
    await center.create_promotion(_promotion("a"))
    await center.create_promotion(_promotion("b"))
    await center.set_budget("a", 70, expected_revision=1)
    await center.set_emergency_freeze("eu", True)  # the last change is the switch: revision 4
    before = center.catalog_page("eu", 0, 100)

    restarted = await restarts.start()

    assert restarted.catalog_page("eu", 0, 100) == before
    assert [p.id for p in before.promotions] == ["b", "a"]
    assert restarted.catalog_page("eu", 3, 100).promotions == []
    with pytest.raises(FailedPrecondition, match="emergency freeze"):
        await restarted.acquire("eu", "i-1", "a", 10, "r-1", demand=0)
    assert (await restarted.create_promotion(_promotion("c"))).revision == before.revision + 1 == 5
    assert (await restarted.set_emergency_freeze("eu", False)).revision == 6


async def test_catalog_change_returns_when_the_catalog_moves_and_after_the_timeout_otherwise(center: Center) -> None:
    await center.create_promotion(_promotion("a"))
    # Already past: at once. The wait's 10 s only guards a hang, and still tells an answer from the 30 s timeout.
    await asyncio.wait_for(center.catalog_change(after=0, timeout_s=30), 10)

    started = time.monotonic()
    await center.catalog_change(after=1, timeout_s=0.1)
    assert time.monotonic() - started >= 0.09

    changes: list[Callable[[], Awaitable[object]]] = [
        lambda: center.set_frozen("a", True),
        lambda: center.set_emergency_freeze("us", True),
    ]
    for change in changes:
        waiting = asyncio.create_task(center.catalog_change(after=_revision(center), timeout_s=30))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await change()
        await asyncio.wait_for(waiting, 10)

    waiting = asyncio.create_task(center.catalog_change(after=_revision(center), timeout_s=30))
    await center.set_emergency_freeze("us", True)  # no change, no wake-up
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()


async def test_the_emergency_freeze_refuses_grants_until_lifted(center: Center) -> None:
    await center.create_promotion(_promotion("a"))
    await center.set_emergency_freeze("eu", True)

    with pytest.raises(FailedPrecondition):
        await center.acquire("eu", "i-1", "a", 10, "r-1", demand=0)
    with pytest.raises(FailedPrecondition):
        await center.acquire_openings("eu", "i-1", [Opening("a", 10, "r-2")])
    assert (await center.acquire("us", "i-1", "a", 10, "r-3", demand=0)).grant.amount == 10
    await center.set_emergency_freeze("", True)
    with pytest.raises(FailedPrecondition):
        await center.acquire("us", "i-1", "a", 10, "r-4", demand=0)
    await center.set_emergency_freeze("", False)
    with pytest.raises(FailedPrecondition):
        await center.acquire("eu", "i-1", "a", 10, "r-5", demand=0)  # its own switch is still on
    assert center.usage("a").unallocated == 90

    await center.set_emergency_freeze("eu", False)

    assert (await center.acquire("eu", "i-1", "a", 10, "r-6", demand=0)).grant.amount == 10
    assert (await center.acquire("us", "i-1", "a", 10, "r-7", demand=0)).grant.amount == 10
    assert center.usage("a").unallocated == 70


async def test_openings_grant_many_promotions_and_answer_a_retry_with_the_same_grants(restarts: Restarts) -> None:
    center = await restarts.start()
    ids = [f"p{n:02d}" for n in range(60)]  # more than one store batch
    for promotion_id in ids:
        await center.create_promotion(_promotion(promotion_id))
    openings = [Opening(promotion_id, 10, f"open-{promotion_id}") for promotion_id in ids]

    first = await center.acquire_openings("eu", "i-1", openings)
    retried = await center.acquire_openings("eu", "i-1", openings)

    grants = [answer for answer in first if isinstance(answer, GrantRecord)]
    assert [(g.promotion_id, g.region, g.amount) for g in grants] == [(i, "eu", 10) for i in ids]
    assert _answered(retried) == _answered(first)
    assert {center.usage(promotion_id).unallocated for promotion_id in ids} == {90}
    assert [await restarts.store.find_grant(g.promotion_id, "eu", g.request_id) for g in grants] == grants
    restarted = await restarts.start()
    assert _answered(await restarted.acquire_openings("eu", "i-1", openings[:3])) == _answered(first[:3])
    assert restarted.usage("p00").unallocated == 90


def _answered(answers: Sequence[GrantRecord | Exception]) -> list[tuple[str, str, int] | str]:
    """What an agent hears of each opening: the grant's id, promotion and amount, or the refusal."""
    return [(a.grant_id, a.promotion_id, a.amount) if isinstance(a, GrantRecord) else str(a) for a in answers]


async def test_openings_and_their_retries_are_booked_without_reading_the_store(restarts: Restarts) -> None:
    center = await restarts.start()
    ids = [f"p{n:02d}" for n in range(60)]
    for promotion_id in ids:
        await center.create_promotion(_promotion(promotion_id))
    openings = [Opening(promotion_id, 10, f"open-{promotion_id}") for promotion_id in ids]
    reads = 0
    find_grant = restarts.store.find_grant

    async def counted(promotion_id: str, region: str, request_id: str) -> GrantRecord | None:
        nonlocal reads
        reads += 1
        return await find_grant(promotion_id, region, request_id)

    restarts.store.find_grant = counted  # type: ignore[method-assign]

    first = await center.acquire_openings("eu", "i-1", openings)
    retried = await center.acquire_openings("eu", "i-1", openings)

    assert reads == 0, "a first opening and its retry were answered from memory"
    assert _answered(retried) == _answered(first)
    assert {center.usage(promotion_id).unallocated for promotion_id in ids} == {90}


async def test_a_retry_older_than_memory_gets_its_grant_from_the_store_and_nothing_more(restarts: Restarts) -> None:
    center = await restarts.start()
    await center.create_promotion(_promotion("p", budget=1_000))
    (opened,) = await center.acquire_openings("eu", "i-1", [Opening("p", 10, "open-p")])
    for n in range(40):  # more grants than the region's account remembers
        await center.acquire("eu", "i-1", "p", 1, f"r-{n}", demand=0)
    unallocated = center.usage("p").unallocated

    (retried,) = await center.acquire_openings("eu", "i-1", [Opening("p", 10, "open-p")])
    acquired_again = await center.acquire("eu", "i-1", "p", 1, "r-0", demand=0)

    assert _answered([retried]) == _answered([opened])
    assert acquired_again.grant == await restarts.store.find_grant("p", "eu", "r-0")
    assert center.usage("p").unallocated == unallocated


async def test_an_opening_that_cannot_be_granted_is_answered_alone(center: Center) -> None:
    for promotion_id in ("frozen", "good", "us-only"):
        await center.create_promotion(
            _promotion(promotion_id, regions=("us",) if promotion_id == "us-only" else ("eu",))
        )
    await center.set_frozen("frozen", True)
    batch = [Opening(p, 10, f"r-{p}") for p in ("frozen", "ghost", "good", "us-only")]

    frozen, ghost, good, elsewhere = await center.acquire_openings("eu", "i-1", batch)

    assert isinstance(frozen, FailedPrecondition)
    assert isinstance(ghost, NotFound)
    assert isinstance(elsewhere, PermissionDenied)
    assert isinstance(good, GrantRecord)
    assert good.amount == 10
    assert [center.usage(p).unallocated for p in ("frozen", "good", "us-only")] == [100, 90, 100]


async def test_openings_never_grant_beyond_the_budget(center: Center) -> None:
    await center.create_promotion(_promotion("small", budget=25))
    await center.create_promotion(_promotion("big", budget=1_000))
    granted = 0
    for call in range(4):
        batch = [Opening("small", 10, f"small-{call}"), Opening("big", 10, f"big-{call}")]
        small, big = await center.acquire_openings("eu" if call % 2 else "us", "i-1", batch)
        assert isinstance(big, GrantRecord)
        if call < 3:
            assert isinstance(small, GrantRecord)
            granted += small.amount
        else:
            assert isinstance(small, Exhausted)

    assert granted == 25
    assert center.usage("small").unallocated == 0
    assert center.usage("big").unallocated == 960


class ObservedStore(SqliteStore):
    """Calls `after_commit` as soon as a commit has landed, as an agent's request may arrive then."""

    after_commit: Callable[[], None] = staticmethod(lambda: None)

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        await super().commit_many(commits, audit)
        asyncio.get_running_loop().call_soon(self.after_commit)


async def test_a_page_read_while_a_change_commits_leaves_no_gap(tmp_path: Path) -> None:
    store = ObservedStore(tmp_path / "center.db")
    center = Center(store, FakeClock())
    await center.start()
    for promotion_id in ("a", "b", "c"):
        await center.create_promotion(_promotion(promotion_id))
    pages: list[CatalogPage] = []
    store.after_commit = lambda: pages.append(center.catalog_page("eu", 0, 1))

    await center.set_budget("a", 70, expected_revision=1)

    seen = [p.id for page in pages for p in page.promotions]
    cursor = pages[0].revision
    while True:  # the agent resumes from the cursor of the page it got
        page = center.catalog_page("eu", cursor, 1)
        seen += [p.id for p in page.promotions]
        cursor = page.revision
        if not page.more:
            break
    await store.close()
    assert set(seen) == {"a", "b", "c"}
