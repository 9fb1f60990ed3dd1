"""What keeps one center group responsive with many active pairs (issue 25): a renewal's and an opening call's
store writes in flight together, a retried opening call answered without redoing the work, the periodic sweeps
over every promotion letting the event loop run, and a shielded call that fails after its caller left reading
its own outcome. The real center on the in-memory store, on the fake clock."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from typing import Any

import pytest

from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.center_agents import Opening
from quota_center.center_renewals import Directive
from quota_center.jobs import SLICE
from quota_center.ledger import GrantRecord
from quota_center.store.base import MAX_BATCH, MAX_REPORT_BATCH, Commit
from quota_common.clock import FakeClock
from quota_common.errors import NotLeader
from quota_common.model import Kind, Promotion, Report
from quota_testing.memory_store import MemoryStore

HOUR_MS = 3_600_000


class SlowStore(MemoryStore):
    """Each write takes a few turns of the event loop (a store round trip), counting the writes in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self.writes = 0

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            await super().commit_many(commits, audit)
            self.writes += 1
        finally:
            self.in_flight -= 1


async def _center(promotions: int, store: MemoryStore, clock: FakeClock) -> tuple[Center, list[str]]:
    center = Center(store, clock)
    await center.start()
    now = clock.wall_ms()
    ids = [f"p{n:04d}" for n in range(promotions)]
    for promotion_id in ids:
        await center.create_promotion(
            Promotion(promotion_id, Kind.COUNT, "", 1_000, now - HOUR_MS, now + HOUR_MS, ("eu", "us"))
        )
    return center, ids


async def test_a_renewals_writes_are_in_flight_together_and_all_land() -> None:
    store, clock = SlowStore(), FakeClock()
    center, ids = await _center(2 * MAX_REPORT_BATCH + 50, store, clock)
    await center.acquire_openings("eu", "i-1", [Opening(pid, 10, f"o-{pid}") for pid in ids])
    store.most_in_flight = 0

    answers = await center.renew("eu", "i-1", dict.fromkeys(ids, Report(10, 0, 3, 0)))

    assert all(isinstance(answer, Directive) for answer in answers)
    assert store.most_in_flight == 3, "the three writes of the renewal wait on the store side by side"
    assert {center.usage(pid).regions[0].account.deducted for pid in ids} == {3}


async def test_an_opening_calls_writes_are_in_flight_together_and_a_retry_redoes_nothing() -> None:
    store, clock = SlowStore(), FakeClock()
    center, ids = await _center(3 * MAX_BATCH, store, clock)
    openings = [Opening(pid, 10, f"o-{pid}") for pid in ids]

    first = asyncio.ensure_future(center.acquire_openings("eu", "i-1", openings))
    await asyncio.sleep(0)
    # The agent gave up on the first call and asks again with the same request ids while it still commits.
    retried = await center.acquire_openings("eu", "i-1", openings)
    answered = await first

    assert store.most_in_flight == 3
    assert store.writes == 3, "the retry waited for the call it retries and wrote nothing of its own"
    assert all(isinstance(answer, GrantRecord) for answer in [*answered, *retried])
    grants = [(a.grant_id, a.amount) for a in answered if isinstance(a, GrantRecord)]
    assert [(a.grant_id, a.amount) for a in retried if isinstance(a, GrantRecord)] == grants
    assert {center.usage(pid).unallocated for pid in ids} == {990}


async def test_the_sweeps_over_every_promotion_let_the_event_loop_run() -> None:
    clock = FakeClock()
    center, ids = await _center(3 * SLICE, MemoryStore(), clock)
    for pid in ids:
        await center.acquire("eu", "i-1", pid, 10, f"r-{pid}", demand=60)
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    try:
        for sweep in (center.alerts.evaluate, center.sample_history):
            before = turns
            await sweep()
            assert turns - before >= 3, f"{sweep.__name__} let other work run between its slices"
    finally:
        other.cancel()
    assert len((await center.history(ids[-1]))[1].regions["eu"]) == 1, "every promotion was sampled"


async def test_a_shielded_call_that_fails_after_its_caller_left_is_not_reported_as_unretrieved() -> None:
    center, _ = await _center(1, MemoryStore(), FakeClock())
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
    gate = asyncio.Event()

    async def deposed() -> None:
        await gate.wait()
        raise NotLeader(None)

    caller = asyncio.ensure_future(center._exclusively(["p0000"], deposed))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()

    assert reported == []
