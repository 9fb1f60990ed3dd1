"""An unknown order key on an in-process ledger: unknown on the region's first ledger life (NOT_FOUND, nothing
to reconcile), LEDGER_LIFE_LOST once a life was lost before this one (the center says so at the Join). The
real agent on the real center (in this process), restarted as a process restarts: on a new ledger."""

from __future__ import annotations

import pytest

from quota_center.center import Center
from quota_common.clock import FakeClock
from quota_common.errors import OrderUnknown
from quota_common.model import Kind, Promotion
from quota_testing.direct_center import DirectCenter
from region_agent.agent import Agent, AgentSettings
from region_agent.errors import RetryAfter, describe
from region_agent.ledger.base import Line, Settle
from region_agent.ledger.memory import InProcessLedger

QUIET = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
HOUR_MS = 3_600_000


async def _started(center: Center, clock: FakeClock) -> Agent:
    """An agent process of region eu, on a ledger of its own."""
    agent = Agent(QUIET, InProcessLedger(clock), DirectCenter(center, "eu"), clock)
    await agent.start()
    return agent


async def _unknown(agent: Agent, order_key: str) -> OrderUnknown:
    with pytest.raises(OrderUnknown) as raised:
        await agent.refund(order_key, "", ())
    return raised.value


@pytest.fixture
async def promoted(center: Center, clock: FakeClock) -> Center:
    now = clock.wall_ms()
    await center.create_promotion(Promotion("coupon", Kind.COUNT, "", 100, now - HOUR_MS, now + HOUR_MS, ("eu",)))
    return center


async def test_on_the_regions_first_life_an_unknown_key_is_unknown(promoted: Center, clock: FakeClock) -> None:
    agent = await _started(promoted, clock)
    await agent.deduct("order-1", "eu", (Line("coupon", 2, "user-7"),))

    unknown = await _unknown(agent, "never-placed")
    report = await agent.get_order("never-placed")
    await agent.stop()

    assert not unknown.life_lost
    assert describe(unknown, RetryAfter(lease_ms=3_000)).reason == "ORDER_UNKNOWN"
    assert (report.order, report.life_lost) == (None, False)


async def test_a_key_from_a_lost_life_answers_ledger_life_lost(promoted: Center, clock: FakeClock) -> None:
    first = await _started(promoted, clock)
    await first.deduct("order-1", "eu", (Line("coupon", 2, "user-7"),))
    await first.stop()

    restarted = await _started(promoted, clock)
    lost = await _unknown(restarted, "order-1")
    with pytest.raises(OrderUnknown) as settling:
        await restarted.settle("order-1", Settle.CONFIRM)
    report = await restarted.get_order("order-1")
    await restarted.stop()

    assert lost.life_lost
    assert settling.value.life_lost
    assert describe(lost, RetryAfter(lease_ms=3_000)).reason == "LEDGER_LIFE_LOST"
    assert (report.order, report.life_lost) == (None, True)
    assert "reconcile the order, do not retry it" in lost.message


async def test_a_region_whose_earlier_life_held_nothing_lost_no_order(center: Center, clock: FakeClock) -> None:
    # The first process joined and stopped before it held any quota: it cannot have accepted an order.
    first = await _started(center, clock)
    await first.stop()

    restarted = await _started(center, clock)
    unknown = await _unknown(restarted, "order-1")
    await restarted.stop()

    assert not unknown.life_lost
