"""A stop is bounded however its background loops end: a catalog stream cancelled mid-read that lingers
until its next heartbeat (as a stream on Python 3.11's wait_for was seen to, 15 s under load) neither holds
up the stop nor the final report. The real agent on the real center (in this process); the stream's read
is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from quota_center.center import Center
from quota_common.clock import FakeClock
from quota_common.model import Kind, Promotion
from quota_testing.direct_center import DirectCenter
from region_agent import agent as agent_module
from region_agent.agent import Agent, AgentSettings
from region_agent.center_port import Page
from region_agent.ledger.base import Line
from region_agent.ledger.memory import InProcessLedger

WATCHING = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=True, opening_lookahead_s=0)
HOUR_MS = 3_600_000


class LingeringStream(DirectCenter):
    """The center in this process, but for a catalog stream whose read, once cancelled, ends only at the
    next heartbeat (`heartbeat`)."""

    def __init__(self, center: Center) -> None:
        super().__init__(center, "eu")
        self.reading = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.heartbeat = asyncio.Event()
        self.ended = asyncio.Event()

    async def watch(self, since_revision: int, idle_timeout_s: float) -> AsyncIterator[Page]:
        try:
            self.reading.set()
            while True:
                try:
                    await asyncio.Event().wait()  # no change ever comes
                except asyncio.CancelledError:
                    self.cancelled.set()
                    await self.heartbeat.wait()
                    raise
            yield  # never reached: it makes this an async generator, as the port's watch is
        finally:
            self.ended.set()


async def test_a_stop_does_not_wait_for_a_stream_that_lingers_after_cancelling(
    clock: FakeClock, center: Center, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "STOP_LOOPS_WAIT_S", 0.01)
    now = clock.wall_ms()
    await center.create_promotion(Promotion("coupon", Kind.COUNT, "", 100, now - HOUR_MS, now + HOUR_MS, ("eu",)))
    port = LingeringStream(center)
    agent = Agent(WATCHING, InProcessLedger(clock), port, clock)
    await agent.start()
    await agent.deduct("order-1", "eu", (Line("coupon", 3, "user-7"),))
    await port.reading.wait()

    # Before the bound, stop awaited every cancelled loop: it returned only after the heartbeat, which
    # comes here only once stop has returned, so the test hung.
    await agent.stop()

    assert port.cancelled.is_set(), "stop cancelled the stream's read"
    assert not port.ended.is_set(), "the stream was still lingering when stop returned"
    [region] = center.usage("coupon").regions
    # The in-process ledger gave back what it had not spent, and its final report said what it had.
    assert (region.account.granted - region.account.returned, region.account.deducted) == (3, 3)
    port.heartbeat.set()
    await port.ended.wait()
