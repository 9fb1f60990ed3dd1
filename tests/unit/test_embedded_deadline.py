"""`quota_client.embedded` with `deadline_s`: an order whose ledger write outlives the deadline raises
DeadlineExceeded saying it may have applied, and asking `get_order` then tells what became of it. The real
agent on the real center (in this process), its ledger's deduction held mid-write by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest

from quota_center.center import Center
from quota_client import Line
from quota_client.embedded import EmbeddedAgent
from quota_client.errors import DeadlineExceeded
from quota_client.model import OrderStatus
from quota_common.clock import FakeClock
from quota_common.model import Kind, Promotion
from quota_common.transport import Transport
from quota_testing.direct_center import DirectCenter
from region_agent import embedded
from region_agent.agent import Agent, AgentSettings
from region_agent.app import WiredAgent
from region_agent.center_groups import CenterGroups
from region_agent.errors import RetryAfter
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.base import NO_LIMITS, DeductOutcome, UserLimit
from region_agent.ledger.base import Line as LedgerLine
from region_agent.ledger.memory import InProcessLedger
from region_agent.metrics import AgentMetrics

QUIET = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
HOUR_MS = 3_600_000


class HeldLedger(InProcessLedger):
    """Deductions reach the ledger (`writing` is set) and apply only once the test sets `answer`: a Redis
    that received the script and has not answered yet."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.writing = asyncio.Event()
        self.answer = asyncio.Event()

    async def deduct(
        self,
        order_key: str,
        lines: tuple[LedgerLine, ...],
        limits: Mapping[str, UserLimit] = NO_LIMITS,
        hold_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        self.writing.set()
        await self.answer.wait()
        return await super().deduct(order_key, lines, limits, hold_ms, placer)


@pytest.fixture
async def held(clock: FakeClock, center: Center) -> AsyncIterator[tuple[EmbeddedAgent, HeldLedger]]:
    now = clock.wall_ms()
    await center.create_promotion(Promotion("coupon", Kind.COUNT, "", 100, now - HOUR_MS, now + HOUR_MS, ("eu",)))
    ledger = HeldLedger(clock)
    ledger.answer.set()  # the start's own writes (its opening grant) go through
    agent = Agent(QUIET, ledger, DirectCenter(center, "eu"), clock)
    await agent.start()
    ledger.answer.clear()
    # The channel to a center is never opened: the agent talks to the center in this process.
    wired = WiredAgent(
        agent, Transport(), AgentMetrics("eu"), CenterGroups.one(GrpcCenter(["127.0.0.1:1"], "eu")), ledger
    )
    try:
        yield EmbeddedAgent(embedded.EmbeddedAgent(wired, placer=""), RetryAfter(lease_ms=3_000)), ledger
    finally:
        ledger.answer.set()
        await wired.close()


async def test_an_order_that_outlives_its_deadline_may_have_applied(held: tuple[EmbeddedAgent, HeldLedger]) -> None:
    quota, ledger = held

    with pytest.raises(DeadlineExceeded) as raised:
        # The ledger never answers while the deadline runs: the outcome depends on no timing.
        await quota.deduct("order-1", [Line("coupon", 2, "user-7")], deadline_s=0.01)

    assert ledger.writing.is_set(), "the deadline cut the order off in the ledger's write, not before it"
    assert raised.value.may_have_applied
    assert "deadline of 0.01 s" in str(raised.value)


async def test_after_a_deadline_get_order_tells_what_became_of_the_order(
    held: tuple[EmbeddedAgent, HeldLedger],
) -> None:
    quota, ledger = held
    with pytest.raises(DeadlineExceeded):
        await quota.deduct("order-1", [Line("coupon", 2, "user-7")], deadline_s=0.01)
    cut_off = await quota.get_order("order-1")

    ledger.answer.set()
    retried = await quota.deduct("order-1", [Line("coupon", 2, "user-7")], deadline_s=60)
    again = await quota.deduct("order-1", [Line("coupon", 2, "user-7")], deadline_s=60)

    assert cut_off.status is OrderStatus.UNKNOWN  # cut off before the ledger applied it: nothing was taken
    assert (retried.replayed, retried.lines) == (False, (Line("coupon", 2, "user-7"),))
    assert again.replayed  # the same key, once
