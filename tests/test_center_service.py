"""The center's service over a real store: what it remembers matches what the store holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from quota_center.clock import FakeClock
from quota_center.ledger import Kind, Promotion, RegionAccount, Report
from quota_center.service import Center
from quota_center.store.base import Commit
from quota_center.store.sqlite import SqliteStore


class SlowStore(SqliteStore):
    """Commits take long enough for a caller to give up halfway, and, like a write already
    handed to the disk, they land whether or not anyone still waits for them."""

    async def commit_many(self, commits: Sequence[Commit]) -> None:
        await asyncio.shield(asyncio.ensure_future(self._commit_later(commits)))

    async def _commit_later(self, commits: Sequence[Commit]) -> None:
        await asyncio.sleep(0.2)
        await super().commit_many(commits)


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[tuple[Center, SlowStore]]:
    """A center whose first acquire (request r-1) was abandoned halfway through its commit."""
    store = SlowStore(tmp_path / "center.db")
    center = Center(store, FakeClock())
    await center.start()
    await center.create_promotion(Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu",)))
    abandoned = asyncio.create_task(center.acquire("eu", "i-1", "p", 10, "r-1", demand=0))
    await asyncio.sleep(0.05)
    abandoned.cancel()
    yield center, store
    await store.close()


async def test_a_caller_giving_up_mid_commit_leaves_memory_equal_to_the_store(slow: tuple[Center, SlowStore]) -> None:
    center, store = slow
    await asyncio.sleep(0.3)

    retried = await center.acquire("eu", "i-1", "p", 10, "r-1", demand=0)
    second = await center.acquire("eu", "i-1", "p", 10, "r-2", demand=0)

    stored = await store.load("p")
    assert stored is not None
    assert retried.grant.amount == 10
    assert second.unallocated == stored.unallocated == 80
    assert center.usage("p").unallocated == 80


async def test_a_retry_racing_the_call_it_retries_gets_the_same_single_grant(slow: tuple[Center, SlowStore]) -> None:
    center, store = slow
    retried = await center.acquire("eu", "i-1", "p", 10, "r-1", demand=0)

    stored = await store.load("p")
    assert stored is not None
    assert stored.unallocated == center.usage("p").unallocated == 90
    assert await store.find_grant("p", "eu", "r-1") == retried.grant


async def test_usage_shows_each_regions_last_reported_burn_rate(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "center.db")
    center = Center(store, FakeClock())
    await center.start()
    await center.create_promotion(Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu", "us")))
    await center.acquire("eu", "i-eu", "p", 10, "r-eu", demand=0)
    await center.acquire("us", "i-us", "p", 10, "r-us", demand=0)

    await center.renew("eu", "i-eu", {"p": Report(10, 0, 4, 0, demand_per_minute=240)})
    await center.renew("us", "i-us", {"p": Report(10, 0, 0, 0, demand_per_minute=0)})

    burn = {view.region: view.demand_per_minute for view in center.usage("p").regions}
    assert burn == {"eu": 240, "us": 0}
    await store.close()


async def test_usage_lists_every_region_the_promotion_allows_even_before_it_holds_anything(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "center.db")
    center = Center(store, FakeClock())
    await center.start()
    await center.create_promotion(Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu", "us", "ap")))
    await center.acquire("eu", "i-eu", "p", 10, "r-eu", demand=0)

    regions = {view.region: view for view in center.usage("p").regions}

    assert list(regions) == ["ap", "eu", "us"]
    assert regions["eu"].account.granted == 10
    assert regions["us"].account == regions["ap"].account == RegionAccount()
    assert regions["us"].lease_active is None
    await store.close()
