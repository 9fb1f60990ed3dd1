"""The center's service over a real store: what it remembers matches what the store holds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.center_agents import Opening
from quota_center.center_renewals import Directive
from quota_center.ledger import GrantRecord, RegionAccount
from quota_center.store.base import Commit
from quota_center.store.sqlite import SqliteStore
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.clock import FakeClock
from quota_common.errors import FailedPrecondition, InvalidArgument, NotFound, Superseded, from_grpc
from quota_common.model import Kind, Promotion, Report
from quota_common.validation import MAX_AMOUNT
from quota_testing.inprocess import issued_incarnation
from quota_testing.memory_store import MemoryStore
from quota_testing.support import promotion

AGENT = pb.AgentIdentity(region="eu", incarnation=issued_incarnation(1))


class HeldStore(SqliteStore):
    """Once `holding`, a commit starts and then waits for the test's `release`, so a caller can give
    up halfway; like a write already handed to the disk, it lands whether or not anyone still waits."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.holding = False
        self.started, self.release, self.landed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        if not self.holding:
            await super().commit_many(commits, audit)
            return
        await asyncio.shield(asyncio.ensure_future(self._commit_when_released(commits, audit)))

    async def _commit_when_released(self, commits: Sequence[Commit], audit: AuditRecord | None) -> None:
        self.started.set()
        await self.release.wait()
        await super().commit_many(commits, audit)
        self.landed.set()


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[Center, HeldStore]]:
    """A center whose first acquire (request r-1) was abandoned halfway through its commit, which the
    store holds until the test sets `release`."""
    store = HeldStore(tmp_path / "center.db")
    center = Center(store, FakeClock())
    await center.start()
    await center.create_promotion(Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu",)))
    store.holding = True
    abandoned = asyncio.create_task(center.acquire("eu", "i-1", "p", 10, "r-1", demand=0))
    await store.started.wait()
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    yield center, store
    await store.close()


async def test_a_caller_giving_up_mid_commit_leaves_memory_equal_to_the_store(held: tuple[Center, HeldStore]) -> None:
    center, store = held
    store.release.set()
    await store.landed.wait()

    retried = await center.acquire("eu", "i-1", "p", 10, "r-1", demand=0)
    second = await center.acquire("eu", "i-1", "p", 10, "r-2", demand=0)

    stored = await store.load("p")
    assert stored is not None
    assert retried.grant.amount == 10
    assert second.unallocated == stored.unallocated == 80
    assert center.usage("p").unallocated == 80


async def test_a_retry_racing_the_call_it_retries_gets_the_same_single_grant(held: tuple[Center, HeldStore]) -> None:
    center, store = held
    retrying = asyncio.create_task(center.acquire("eu", "i-1", "p", 10, "r-1", demand=0))
    for _ in range(10):  # turns of the event loop, not time: the retry goes as far as it can before the commit lands
        await asyncio.sleep(0)
    assert not retrying.done(), "the retry answered beside the call it retries"
    store.release.set()
    retried = await retrying

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


@pytest.fixture
async def two_promotions() -> tuple[Center, FakeClock, MemoryStore]:
    """Promotions "p" and "q" (budget 100 each, eu and us) of which eu (incarnation i-1) holds 10 each."""
    store, clock = MemoryStore(), FakeClock()
    center = Center(store, clock)
    await center.start()
    for promotion_id in ("p", "q"):
        await center.create_promotion(Promotion(promotion_id, Kind.COUNT, "", 100, 0, 10**13, ("eu", "us")))
        await center.acquire("eu", "i-1", promotion_id, 10, f"r-{promotion_id}", demand=0)
    return center, clock, store


async def test_renew_refuses_a_bad_report_alone_and_renews_the_other_promotions(
    two_promotions: tuple[Center, FakeClock, MemoryStore],
) -> None:
    center, clock, store = two_promotions
    p_before = store.promotions["p"]
    clock.advance(center.settings.lease_ttl_s * 0.75)

    answers = await center.renew(
        "eu", "i-1", {"p": Report(99, 0, 0, 0), "ghost": Report(0, 0, 0, 0), "q": Report(10, 0, 4, 0)}
    )
    clock.advance(center.settings.lease_ttl_s * 0.5)

    refused, unknown, renewed = answers
    assert isinstance(refused, InvalidArgument)
    assert "reports 99 granted" in refused.message
    assert isinstance(unknown, NotFound)
    assert "'ghost'" in unknown.message
    assert isinstance(renewed, Directive)
    assert renewed.promotion.id == "q"
    assert store.promotions["p"] == p_before
    leases = {promotion_id: center.usage(promotion_id).regions[0] for promotion_id in ("p", "q")}
    assert (leases["p"].lease_active, leases["q"].lease_active) == (False, True)
    assert leases["q"].account.deducted == 4


async def test_a_superseded_incarnation_is_refused_as_a_whole_and_nothing_of_it_is_taken_in(
    two_promotions: tuple[Center, FakeClock, MemoryStore],
) -> None:
    center, _, store = two_promotions
    await center.acquire("eu", "i-2", "q", 5, "r-q-2", demand=0)
    before = dict(store.promotions)

    with pytest.raises(Superseded, match="another agent process of the region replaced this one"):
        await center.renew("eu", "i-1", {"p": Report(10, 0, 3, 0), "q": Report(10, 0, 3, 0)})
    with pytest.raises(Superseded):
        await center.acquire("eu", "i-1", "q", 5, "r-q-3", demand=0)
    with pytest.raises(Superseded):
        await center.acquire_openings("eu", "i-1", [Opening("p", 5, "r-p-3"), Opening("q", 5, "r-q-4")])

    assert store.promotions == before


async def test_calls_naming_unknown_promotions_leave_no_lock_behind(
    two_promotions: tuple[Center, FakeClock, MemoryStore],
) -> None:
    center, _, _ = two_promotions
    locks = len(center._locks)

    for n in range(200):
        ghost = f"ghost-{n}"
        with pytest.raises(NotFound):
            await center.acquire("eu", "i-1", ghost, 1, f"r-{n}", demand=0)
        with pytest.raises(NotFound):
            await center.return_quota("eu", "i-1", ghost, Report(0, 0, 0, 0))
        with pytest.raises(NotFound):
            await center.set_frozen(ghost, True)
        (refusal,) = await center.renew("eu", "i-1", {ghost: Report(0, 0, 0, 0)})
        assert isinstance(refusal, NotFound)

    assert len(center._locks) == locks == 0


async def test_an_acquire_replayed_with_another_amount_is_told_and_changes_nothing(
    two_promotions: tuple[Center, FakeClock, MemoryStore],
) -> None:
    center, _, store = two_promotions
    before = dict(store.promotions)

    with pytest.raises(FailedPrecondition, match="request id 'r-p' was used for an acquire of 10") as caught:
        await center.acquire("eu", "i-1", "p", 11, "r-p", demand=0)
    replayed = await center.acquire("eu", "i-1", "p", 10, "r-p", demand=0)

    assert "new request id" in caught.value.message
    assert replayed.grant == await store.find_grant("p", "eu", "r-p")
    assert store.promotions == before


async def test_a_grant_stored_before_asks_were_kept_answers_a_replay_of_any_amount(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE grants (grant_id TEXT NOT NULL UNIQUE, request_id TEXT NOT NULL, promotion_id TEXT NOT NULL,"
            " region TEXT NOT NULL, incarnation TEXT NOT NULL, amount INTEGER NOT NULL,"
            " PRIMARY KEY (promotion_id, region, request_id))"
        )
        old.execute("INSERT INTO grants VALUES ('g-1', 'r-1', 'p', 'eu', 'i-1', 10)")
    store = SqliteStore(path)
    center = Center(store, FakeClock())
    await center.start()
    await center.create_promotion(Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu",)))

    replayed = await center.acquire("eu", "i-1", "p", 7, "r-1", demand=0)

    assert replayed.grant == GrantRecord("g-1", "r-1", "p", "eu", "i-1", 10, asked=0)
    await store.close()


# Over gRPC


async def test_renew_answers_the_emergency_switch(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion("p", budget=100)), timeout=5)
    await admin.SetEmergencyFreeze(pb.SetEmergencyFreezeRequest(region="eu", frozen=True), timeout=5)

    answer = await allocation.Renew(pb.RenewRequest(agent=AGENT, counters=[pb.Counters(promotion_id="p")]), timeout=5)

    assert list(answer.emergency.regions) == ["eu"]
    assert answer.emergency.revision > 0
    (directive,) = answer.directives
    assert (directive.promotion_id, directive.refusal) == ("p", "")


async def test_a_superseded_agent_is_told_so_in_the_trailing_metadata(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion("p", budget=100)), timeout=5)
    newer = pb.AgentIdentity(region="eu", incarnation=issued_incarnation(2))
    await allocation.Acquire(pb.AcquireRequest(agent=newer, promotion_id="p", amount=5, request_id="r-1"), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await allocation.Renew(pb.RenewRequest(agent=AGENT, counters=[pb.Counters(promotion_id="p")]), timeout=5)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(from_grpc(caught.value), Superseded)


async def test_a_demand_beyond_2_to_the_53_is_capped_not_refused(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion("p", budget=100)), timeout=5)
    huge = 2**63 - 1

    granted = await allocation.Acquire(
        pb.AcquireRequest(agent=AGENT, promotion_id="p", amount=40, request_id="r-1", demand_per_minute=huge),
        timeout=5,
    )
    renewed = await allocation.Renew(
        pb.RenewRequest(agent=AGENT, counters=[pb.Counters(promotion_id="p", granted=40, demand_per_minute=huge)]),
        timeout=5,
    )

    assert granted.grant.amount == 40
    assert renewed.directives[0].refusal == ""
    usage = await admin.GetUsage(pb.GetUsageRequest(promotion_id="p"), timeout=5)
    assert {region.region: region.demand_per_minute for region in usage.regions}["eu"] == MAX_AMOUNT


async def test_a_renewal_with_counters_above_2_to_the_53_is_taken_in(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion("p", budget=MAX_AMOUNT)), timeout=5)
    cycled = pb.Counters(promotion_id="p", granted=MAX_AMOUNT, returned=MAX_AMOUNT)
    spent = pb.Counters(
        promotion_id="p", granted=2 * MAX_AMOUNT, returned=2 * MAX_AMOUNT - 2, deducted=2**53 + 3, refunded=2**53 + 1
    )
    for n, counters in enumerate((cycled, spent)):
        acquire = pb.AcquireRequest(agent=AGENT, promotion_id="p", amount=MAX_AMOUNT, request_id=f"r-{n}")
        await allocation.Acquire(acquire, timeout=5)
        await allocation.Return(pb.ReturnRequest(agent=AGENT, counters=counters), timeout=5)

    renewed = await allocation.Renew(pb.RenewRequest(agent=AGENT, counters=[spent]), timeout=5)

    assert renewed.directives[0].refusal == ""
    usage = await admin.GetUsage(pb.GetUsageRequest(promotion_id="p"), timeout=5)
    eu = next(region for region in usage.regions if region.region == "eu")
    assert (eu.granted, eu.returned, eu.consumed, eu.held) == (2 * MAX_AMOUNT, 2 * MAX_AMOUNT - 2, 2, 0)


async def test_an_agent_older_than_the_region_lease_is_renewed_as_before(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    for promotion_id in ("p", "q"):
        await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion(promotion_id, budget=100)), timeout=5)
        acquire = pb.AcquireRequest(agent=AGENT, promotion_id=promotion_id, amount=10, request_id=f"r-{promotion_id}")
        await allocation.Acquire(acquire, timeout=5)
    # What an agent of release v0.1.0 sends: every promotion, no region lease.
    counters = [pb.Counters(promotion_id=p, granted=10, deducted=2) for p in ("p", "q")]

    old = await allocation.Renew(pb.RenewRequest(agent=AGENT, counters=counters), timeout=5)

    assert [(d.promotion_id, d.refusal, d.revision > 0) for d in old.directives] == [("p", "", True), ("q", "", True)]
    assert (old.lease_ttl_ms, old.region_lease_ttl_ms, list(old.notices), old.report_all) == (10_000, 0, [], False)
    usage = await admin.GetUsage(pb.GetUsageRequest(promotion_id="q"), timeout=5)
    eu = next(r for r in usage.regions if r.region == "eu")
    assert (eu.consumed, eu.lease_state) == (2, pb.LEASE_STATE_ACTIVE)


async def test_a_region_lease_is_renewed_by_a_call_that_reports_nothing(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    created = await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion("p", budget=100)), timeout=5)
    await allocation.Acquire(pb.AcquireRequest(agent=AGENT, promotion_id="p", amount=10, request_id="r-1"), timeout=5)
    request = pb.RenewRequest(agent=AGENT, region_lease=True, catalog_revision=created.revision - 1)

    renewed = await allocation.Renew(request, timeout=5)

    assert (list(renewed.directives), renewed.region_lease_ttl_ms, renewed.report_all) == ([], 10_000, True)
    assert [(n.promotion_id, n.revision) for n in renewed.notices] == [("p", created.revision)]
