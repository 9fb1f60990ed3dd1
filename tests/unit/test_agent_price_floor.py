"""The agent judges order lines against the promotion's price floor by itself, with no center call: a
promotion that blocks refuses the order (all lines or none), one that does not lets it through; either
way the line is counted and the count reaches the center with the next renewal."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from quota_common.clock import FakeClock
from quota_common.errors import FailedPrecondition, Rejected, RejectReason
from region_agent.agent import Agent
from region_agent.ledger.base import Line, Settle
from region_agent.ledger.memory import InProcessLedger
from tests.unit.test_agent_scripted_center import QUIET, ScriptedCenter

TYPO = Line("flash", 1, "user", 99_900, 89_910)
"""A flash price one zero short: 999.00 sold at 99.90."""
MEANT = Line("flash", 1, "user", 99_900, 9_990)


@pytest.fixture
async def shop() -> AsyncIterator[tuple[Agent, ScriptedCenter]]:
    """An agent of region eu, and its scripted center with promotions flash (the one with a floor) and plain."""
    clock = FakeClock()
    center = ScriptedCenter(clock)
    center.create("flash")
    center.create("plain")
    agent = Agent(QUIET, InProcessLedger(clock), center, clock)
    await agent.start()
    yield agent, center
    await agent.stop()


async def _set_floor(agent: Agent, center: ScriptedCenter, block: bool) -> None:
    flash = center.promotions["flash"]
    center.promotions["flash"] = replace(flash, floor_bps=5_000, block_below_floor=block, revision=flash.revision + 1)
    await agent.catalog.pull()


async def _below_floor(agent: Agent) -> dict[str, int]:
    return {status.promotion_id: status.below_floor for status in await agent.status()}


async def test_a_blocking_promotion_refuses_the_whole_order_locally_and_counts_each_refusal(
    shop: tuple[Agent, ScriptedCenter], caplog: pytest.LogCaptureFixture
) -> None:
    agent, center = shop
    await agent.deduct("warm-up", "eu", (MEANT, Line("plain", 1, "user")))
    await _set_floor(agent, center, block=True)
    before = [status.balance for status in await agent.status()]
    center.catalog_down = True  # the check needs no center
    calls = center.calls

    for _attempt in range(2):
        with pytest.raises(Rejected) as refused, caplog.at_level(logging.WARNING):
            await agent.deduct("o-typo", "eu", (Line("plain", 1, "user"), TYPO))
        assert refused.value.reason is RejectReason.BELOW_FLOOR
        assert "promotion flash sells a unit at 9990" in refused.value.message
        assert "below its floor of 49950" in refused.value.message

    assert [status.balance for status in await agent.status()] == before  # the plain line was not spent either
    assert center.calls == calls
    assert await _below_floor(agent) == {"flash": 2, "plain": 0}
    assert "order 'o-typo' refused: promotion flash sells a unit at 9990" in caplog.text
    with pytest.raises(Rejected, match="sets a price floor, and the line states no unit_price") as unpriced:
        await agent.deduct("o-unpriced", "eu", (Line("flash", 1, "user"),))  # leaving the price out is no way round
    assert unpriced.value.reason is RejectReason.BELOW_FLOOR
    assert await _below_floor(agent) == {"flash": 3, "plain": 0}

    center.catalog_down = False
    await agent.renew_once()
    assert center.reports["flash"].below_floor == 3
    assert center.reports["plain"].below_floor == 0


async def test_without_blocking_the_line_goes_through_and_counts_once_per_order(
    shop: tuple[Agent, ScriptedCenter], caplog: pytest.LogCaptureFixture
) -> None:
    agent, center = shop
    await _set_floor(agent, center, block=False)

    with caplog.at_level(logging.WARNING):
        first = await agent.deduct("o-typo", "eu", (TYPO,))
        retry = await agent.deduct("o-typo", "eu", (TYPO,))
    await agent.deduct("o-fine", "eu", (MEANT,))
    await agent.deduct("o-unpriced", "eu", (Line("flash", 1, "user"),))  # an old caller states no price

    assert first.accepted
    assert not first.replayed
    assert retry.replayed
    assert caplog.text.count("order 'o-typo' let through: promotion flash sells a unit at 9990") == 1
    statuses = {status.promotion_id: status for status in await agent.status()}
    assert statuses["flash"].balance.deducted == 3
    assert statuses["flash"].below_floor == 1
    await agent.renew_once()
    assert center.reports["flash"].below_floor == 1


async def test_a_retry_with_other_prices_is_a_different_order_under_a_used_key(
    shop: tuple[Agent, ScriptedCenter],
) -> None:
    agent, center = shop
    await _set_floor(agent, center, block=True)
    await agent.deduct("o-1", "eu", (MEANT,))

    with pytest.raises(FailedPrecondition, match="already used with different lines"):
        await agent.deduct("o-1", "eu", (replace(MEANT, discount=9_000),))
    with pytest.raises(FailedPrecondition, match="already used with different lines"):
        await agent.deduct("o-1", "eu", (TYPO,))  # refused by the floor, and no replay of o-1 either
    assert (await agent.deduct("o-1", "eu", (MEANT,))).replayed


async def test_a_reservation_is_judged_when_made_and_its_confirm_is_not_judged_again(
    shop: tuple[Agent, ScriptedCenter],
) -> None:
    agent, center = shop
    await _set_floor(agent, center, block=False)
    await agent.deduct("o-held", "eu", (TYPO,), hold_ms=60_000)
    await _set_floor(agent, center, block=True)

    with pytest.raises(Rejected) as refused:
        await agent.deduct("o-new", "eu", (TYPO,), hold_ms=60_000)
    confirmed = await agent.settle("o-held", Settle.CONFIRM)

    assert refused.value.reason is RejectReason.BELOW_FLOOR
    assert confirmed.lines == (TYPO,)
    assert await _below_floor(agent) == {"flash": 2}
