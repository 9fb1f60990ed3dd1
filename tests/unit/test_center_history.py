"""The center's usage history on a fake clock: sampled from its books, stored at most once a minute and
only when a figure changed, and there again after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.history_book import document_name
from quota_common.clock import FakeClock
from quota_common.errors import NotFound
from quota_common.model import Kind, Promotion, Report
from quota_testing.memory_store import MemoryStore

PROMOTION = Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu", "us"))


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.history_writes = 0

    async def save_document(self, name: str, document: dict[str, Any], audit: AuditRecord | None = None) -> None:
        self.history_writes += name == document_name("p")
        await super().save_document(name, document, audit)


async def test_history_is_sampled_stored_when_changed_at_most_once_a_minute_and_survives_a_restart() -> None:
    clock, store = FakeClock(), CountingStore()
    center = Center(store, clock)
    await center.start()
    await center.create_promotion(PROMOTION)
    await center.acquire("eu", "eu-1", "p", 10, "r1", 0)
    start = clock.wall_ms()

    await center.sample_history()
    for spent in range(1, 7):
        clock.advance(10)
        await center.renew("eu", "eu-1", {"p": Report(10, 0, spent, 0)})
        await center.sample_history()
    for _ in range(12):
        clock.advance(10)
        await center.sample_history()

    _, history = await center.history("p")
    assert history.regions["eu"][0] == (start, 0, 10)
    assert history.regions["eu"][-1] == (start + 180_000, 6, 10)
    assert len(history.regions["eu"]) == 19
    assert store.history_writes == 2  # the first sample, then the figures of a minute later; none since

    restarted = Center(store, clock)
    await restarted.start()
    _, stored = await restarted.history("p")
    assert stored.regions["eu"][-1][1] == 6


async def test_the_history_of_an_unknown_promotion_is_not_found() -> None:
    center = Center(MemoryStore(), FakeClock())
    await center.start()

    with pytest.raises(NotFound):
        await center.history("nope")
