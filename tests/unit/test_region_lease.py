"""Renewals in proportion to change: one lease over all of a region's promotions, reports only of what
moved, the center's notices for the rest, and batched commits of what changed. The real center on the
in-memory store and the real agent through the in-memory port, on the fake clock."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest

from quota_center import center_renewals
from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.center_agents import Opening
from quota_center.center_renewals import Directive
from quota_center.ledger import PromotionState, RegionAccount
from quota_center.store.base import MAX_BATCH_BYTES, MAX_REPORT_BATCH, Commit, batches
from quota_common.clock import FakeClock
from quota_common.errors import Exhausted, Superseded
from quota_common.model import Kind, Promotion, Report
from quota_testing.direct_center import DirectCenter
from quota_testing.memory_store import MemoryStore
from region_agent.agent import Agent, AgentSettings
from region_agent.center_port import RegionLease, RenewAnswer
from region_agent.ledger.base import Line
from region_agent.ledger.memory import InProcessLedger

HOUR_MS = 3_600_000
QUIET = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
"""No loop runs by itself during a test: the test renews when it means to."""
IDLE_S = 2_000.0
"""Long enough for a measured demand to decay to exactly 0."""


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []
        """Promotions per commit_many, in order."""
        self.bytes: list[int] = []
        """Their documents' bytes, per commit_many."""

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        self.writes.append(len(commits))
        self.bytes.append(sum(len(json.dumps(state.to_document())) for state, _, _ in commits))
        await super().commit_many(commits, audit)


async def _center(promotions: int, clock: FakeClock, store: MemoryStore | None = None) -> Center:
    center = Center(store or MemoryStore(), clock)
    await center.start()
    now = clock.wall_ms()
    for n in range(promotions):
        await center.create_promotion(
            Promotion(f"p{n:03d}", Kind.COUNT, "", 1_000, now - HOUR_MS, now + HOUR_MS, ("eu", "us"))
        )
    return center


def _lease_active(center: Center, promotion_id: str, region: str = "eu") -> bool | None:
    return next(view.lease_active for view in center.usage(promotion_id).regions if view.region == region)


# The center


async def test_a_region_lease_renews_every_promotion_of_the_region_without_reporting_it() -> None:
    clock = FakeClock()
    center = await _center(3, clock)
    for n in range(3):
        await center.acquire("eu", "i-1", f"p{n:03d}", 10, f"r-{n}", demand=0)
    clock.advance(center.settings.lease_ttl_s * 0.75)

    renewal = await center.renew_region("eu", "i-1", {}, catalog_revision=3, full=False)
    clock.advance(center.settings.lease_ttl_s * 0.5)

    assert renewal.region_lease
    assert (renewal.directives, renewal.notices) == ([], [])
    assert [_lease_active(center, f"p{n:03d}") for n in range(3)] == [True, True, True]
    assert _lease_active(center, "p000", "us") is None, "a region that never held quota has no lease"


async def test_only_reports_that_change_the_books_are_committed_and_in_batches() -> None:
    clock, store = FakeClock(), CountingStore()
    center = await _center(250, clock, store)
    ids = [f"p{n:03d}" for n in range(250)]
    for promotion_id in ids:
        await center.acquire("eu", "i-1", promotion_id, 10, f"r-{promotion_id}", demand=0)
    store.writes.clear()

    moved = {promotion_id: Report(10, 0, 3, 0) for promotion_id in ids}
    answers = await center.renew("eu", "i-1", moved)
    assert all(isinstance(answer, Directive) for answer in answers)
    assert store.writes == [MAX_REPORT_BATCH, MAX_REPORT_BATCH, 50]

    store.writes.clear()
    await center.renew("eu", "i-1", moved)
    assert store.writes == [], "a report that says nothing new is answered without a write"
    assert center.usage("p249").regions[0].account.deducted == 3


async def test_openings_of_promotions_with_heavy_documents_are_written_within_the_bytes() -> None:
    clock, store = FakeClock(), CountingStore()
    now = clock.wall_ms()
    wide = {f"region-{n:04d}": RegionAccount(incarnation="i-0", granted=n) for n in range(400)}
    for n in range(40):
        promotion = Promotion(f"p{n:03d}", Kind.COUNT, "", 10**6, now, now + HOUR_MS, ("eu",), revision=n + 1)
        store.promotions[promotion.id] = json.dumps(PromotionState(promotion, dict(wide)).to_document())
    center = Center(store, clock)
    await center.start()

    answers = await center.acquire_openings("eu", "i-1", [Opening(f"p{n:03d}", 10, f"o-{n}") for n in range(40)])

    assert all(not isinstance(answer, Exception) for answer in answers)
    assert len(store.writes) > 1
    assert max(store.bytes) <= MAX_BATCH_BYTES


def test_batches_keep_within_the_count_and_the_bytes() -> None:
    weights = {"a": 400, "b": 400, "c": 400, "d": 2_000, "e": 1}

    assert batches(list(weights), weights.__getitem__, 2, 1_000) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert batches(list(weights), weights.__getitem__, 10, 10_000) == [list(weights)]
    assert batches([], weights.__getitem__, 2, 1_000) == []


async def test_a_change_the_region_has_not_seen_comes_as_a_notice() -> None:
    clock = FakeClock()
    center = await _center(3, clock)
    seen = center.promotion("p002").revision
    await center.set_frozen("p001", True)

    behind = await center.renew_region("eu", "i-1", {}, catalog_revision=seen, full=True)
    current = await center.renew_region("eu", "i-1", {}, catalog_revision=center.promotion("p001").revision, full=True)

    assert [(n.promotion.id, n.promotion.frozen) for n in behind.notices] == [("p001", True)]
    assert current.notices == []


async def test_a_catalog_too_far_behind_gets_no_region_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(center_renewals, "MAX_NOTICES", 2)
    clock = FakeClock()
    center = await _center(3, clock)

    renewal = await center.renew_region("eu", "i-1", {}, catalog_revision=0, full=True)

    assert not renewal.region_lease, "the agent must report every promotion, each answered with its revision"


async def test_a_region_holding_idle_quota_that_another_lacks_is_asked_for_it_unreported() -> None:
    clock = FakeClock()
    center = await _center(1, clock)
    await center.acquire("us", "u-1", "p000", 600, "r-us", demand=0)
    await center.acquire("eu", "i-1", "p000", 400, "r-eu", demand=60_000)
    with pytest.raises(Exhausted):
        await center.acquire("eu", "i-1", "p000", 400, "r-eu-2", demand=60_000)

    renewal = await center.renew_region("us", "u-1", {}, catalog_revision=1, full=True)

    (notice,) = renewal.notices
    assert notice.promotion.id == "p000"
    assert 0 < notice.reclaim <= 600


async def test_a_superseded_incarnation_gets_no_region_lease_whatever_it_reports() -> None:
    clock = FakeClock()
    center = await _center(2, clock)
    await center.acquire("eu", "i-1", "p000", 10, "r-0", demand=0)
    await center.acquire("eu", "i-2", "p001", 10, "r-1", demand=0)

    with pytest.raises(Superseded):
        await center.renew_region("eu", "i-1", {}, catalog_revision=2, full=False)


async def test_a_new_leader_asks_each_region_for_a_full_report_once() -> None:
    clock = FakeClock()
    center = await _center(1, clock)

    assert (await center.renew_region("eu", "i-1", {}, 1, full=False)).report_all
    assert not (await center.renew_region("eu", "i-1", {}, 1, full=True)).report_all
    assert not (await center.renew_region("eu", "i-1", {}, 1, full=False)).report_all
    await center.start()  # a new term: what it learnt from renewals is gone
    assert (await center.renew_region("eu", "i-1", {}, 1, full=False)).report_all


# The agent


class OldCenter(DirectCenter):
    """A center older than the region lease: it renews only the promotions reported."""

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        return await super().renew(incarnation, reports)


async def _agent(center: Center, clock: FakeClock, port: DirectCenter) -> Agent:
    agent = Agent(QUIET, InProcessLedger(clock), port, clock)
    await agent.start()
    for n in range(20):
        await agent.deduct(f"o-{n}", "eu", (Line(f"p{n:03d}", 1, "user"),))
    await agent.renew_once()
    clock.advance(IDLE_S)  # the measured demand decays to 0: its last change is reported once
    await agent.renew_once()
    return agent


async def test_an_idle_agent_renews_with_one_empty_call_and_keeps_spending() -> None:
    clock = FakeClock()
    center = await _center(20, clock)
    port = DirectCenter(center, "eu")
    agent = await _agent(center, clock, port)
    entries, calls = port.entries, port.calls

    for _ in range(5):  # 15 s of renewals: beyond the 10 s lease, had nothing renewed it
        clock.advance(3.0)
        await agent.renew_once()
    assert (port.entries - entries, port.calls - calls) == (0, 5)
    await agent.deduct("o-late", "eu", (Line("p007", 1, "user"),))
    await agent.renew_once()

    assert port.entries - entries == 1, "only the promotion that moved is reported"
    assert center.usage("p007").regions[0].account.deducted == 2
    await agent.stop()


async def test_an_agent_reports_everything_to_a_center_without_region_leases() -> None:
    clock = FakeClock()
    center = await _center(20, clock)
    port = OldCenter(center, "eu")
    agent = await _agent(center, clock, port)
    entries = port.entries

    clock.advance(3.0)
    await agent.renew_once()

    assert port.entries - entries == 20
    await agent.stop()
