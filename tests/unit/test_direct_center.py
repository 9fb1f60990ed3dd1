"""The real agent against the real center through the in-memory port, on the fake clock: what the agent
does with the center's answers (grants, directives, a freeze, a newer process of its region), and the
center's books after it all: every region's granted - returned = consumed + held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from quota_center.center import Center
from quota_center.ledger import RegionAccount
from quota_center.lifecycle import Update
from quota_common.clock import FakeClock
from quota_common.errors import NotLeader, Rejected, RejectReason, Superseded, Unavailable
from quota_common.model import Kind, Promotion
from quota_testing.direct_center import DirectCenter
from quota_testing.memory_store import MemoryStore
from quota_testing.support import eventually
from region_agent.agent import Agent, AgentSettings
from region_agent.ledger.base import Balance, Joined, Line
from region_agent.ledger.memory import InProcessLedger

HOUR_MS = 3_600_000
BUDGET = 1_000
QUIET = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
"""No loop runs by itself during a test: the test renews when it means to."""


@dataclass
class World:
    clock: FakeClock
    center: Center

    def agent(self, settings: AgentSettings = QUIET) -> tuple[Agent, InProcessLedger, DirectCenter]:
        ledger, port = InProcessLedger(self.clock), DirectCenter(self.center, settings.region)
        return Agent(settings, ledger, port, self.clock), ledger, port

    def eu(self) -> RegionAccount:
        return next(view.account for view in self.center.usage("promo").regions if view.region == "eu")


@pytest.fixture
async def world() -> World:
    clock = FakeClock()
    center = Center(MemoryStore(), clock)
    await center.start()
    now = clock.wall_ms()
    await center.create_promotion(
        Promotion("promo", Kind.COUNT, "", BUDGET, now - HOUR_MS, now + HOUR_MS, ("eu", "us"))
    )
    return World(clock, center)


@pytest.fixture
async def agent(world: World) -> AsyncIterator[tuple[Agent, InProcessLedger, DirectCenter]]:
    served = world.agent()
    await served[0].start()
    yield served
    await served[0].stop()


async def _deduct(agent: Agent, order_key: str, amount: int = 1) -> None:
    await agent.deduct(order_key, "eu", (Line("promo", amount, "user"),))


async def _balance(ledger: InProcessLedger) -> Balance:
    return (await ledger.balances())["promo"]


async def test_deductions_refill_from_the_center_and_renewals_report_them(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    served, ledger, port = agent
    for n in range(100):
        await _deduct(served, f"o-{n}", 3)
    await served.renew_once()

    assert world.eu().consumed == 300
    assert port.calls > 2, "refilled more than once"

    async def books_match() -> bool:  # the last refill may still be on its way to the ledger
        balance, account = await _balance(ledger), world.eu()
        return (balance.granted, balance.returned) == (account.granted, account.returned)

    await eventually(books_match, timeout_s=5)
    account = world.eu()
    assert world.center.usage("promo").unallocated == BUDGET - account.outstanding


async def test_a_graceful_stop_gives_back_what_is_unspent_and_the_books_match(world: World) -> None:
    served, ledger, _ = world.agent()
    await served.start()
    for n in range(10):
        await _deduct(served, f"o-{n}", 7)

    await served.stop()

    account = world.eu()
    assert (await _balance(ledger)).available == 0
    assert account.total_granted - account.total_returned == account.consumed == 70
    assert world.center.usage("promo").unallocated == BUDGET - 70


async def test_a_grant_whose_answer_was_lost_is_applied_at_the_next_renewal(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    served, ledger, port = agent
    await _deduct(served, "o-1")
    before = (await _balance(ledger)).granted

    lost = await port.acquire(served.incarnation, "promo", 10, "answer-lost", 0)
    await served.renew_once()

    assert (await _balance(ledger)).granted == before + lost.amount == world.eu().granted


async def test_a_freeze_reaches_the_agent_by_its_renewal_and_the_allotment_comes_back(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    served, _, port = agent
    await _deduct(served, "o-1")

    await world.center.set_frozen("promo", True)
    await served.renew_once()  # its directive names a newer revision: the agent fetches the promotion

    async def given_back() -> bool:
        return world.eu().held == 0

    await eventually(given_back, timeout_s=5)
    assert port.fetches == 1
    with pytest.raises(Rejected) as frozen:
        await _deduct(served, "o-2")
    assert frozen.value.reason is RejectReason.FROZEN


async def test_a_newer_process_of_the_region_retires_the_older(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    old, _, _ = agent
    await _deduct(old, "o-1")
    new, _, _ = world.agent()
    await new.start()  # waits out the old one's lease (the fake clock moves), which nothing renews meanwhile
    try:
        await _deduct(new, "o-2")  # its acquire admits the new incarnation

        with pytest.raises(Superseded):
            await old.renew_once()
        with pytest.raises(Rejected) as retired:
            await _deduct(old, "o-3")
        assert retired.value.reason is RejectReason.LEASE_EXPIRED
    finally:
        await new.stop()


class AwayAtFirst(DirectCenter):
    """The center does not answer the first Join: the agent's start gives up on it and joins later."""

    joins = 0

    async def join(self, replaces: str) -> Joined:
        self.joins += 1
        if self.joins == 1:
            raise Unavailable("the center is away")
        return await super().join(replaces)


async def _started_while_the_center_was_away(world: World) -> Agent:
    """A second agent of eu on its own in-process ledger, started while the center did not answer."""
    stray = Agent(QUIET, InProcessLedger(world.clock), AwayAtFirst(world.center, "eu"), world.clock)
    await stray.start()  # its first renewal's Join is refused: the region is held
    return stray


async def test_a_second_agent_that_joins_after_its_start_retires_once_the_holder_renewed_past_its_lease(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    held, _, _ = agent
    stray = await _started_while_the_center_was_away(world)
    try:
        with pytest.raises(Unavailable, match="has not joined region eu"):
            await _deduct(stray, "early")  # no Join before the holder's lease could have run out

        world.clock.advance(world.center.settings.lease_ttl_s + 1)
        await held.renew_once()
        with pytest.raises(Rejected) as retired:
            await _deduct(stray, "late")

        assert retired.value.reason is RejectReason.LEASE_EXPIRED

        assert "this agent cannot join: region eu is served by another agent" in await stray.wait_retired()
        await _deduct(held, "still-served")
        assert not stray.incarnation  # never joined: nothing of the region's was written off
    finally:
        await stray.stop()


async def test_an_agent_that_joins_after_its_start_takes_over_once_the_old_lease_ran_out(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    old, _, _ = agent
    restarted = await _started_while_the_center_was_away(world)
    try:
        world.clock.advance(world.center.settings.lease_ttl_s + 1)  # the old process renews no more

        await _deduct(restarted, "after")

        assert restarted.incarnation > old.incarnation
    finally:
        await restarted.stop()


async def test_the_catalog_stream_brings_a_freeze_and_ends_when_the_center_stops_leading(world: World) -> None:
    served, _, _ = world.agent(replace(QUIET, push=True))
    await served.start()
    try:
        await world.center.set_frozen("promo", True)

        async def frozen() -> bool:
            promotion = served.cache.get("promo")
            return promotion is not None and promotion.frozen

        await eventually(frozen, timeout_s=5)
    finally:
        await served.stop()
    stream = DirectCenter(world.center, "eu").watch(0, 15.0)
    first = await anext(stream)
    assert first.changes.revision == world.center.promotion("promo").revision

    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the stream waits for the next change
    world.center.stop_serving()
    with pytest.raises(NotLeader):
        await waiting


async def test_a_stream_open_when_the_center_is_cut_off_breaks_at_its_next_page(world: World) -> None:
    port = DirectCenter(world.center, "eu")
    stream = port.watch(0, 15.0)
    await anext(stream)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the stream waits for the next change

    port.down = True
    await world.center.set_frozen("promo", True)

    with pytest.raises(Unavailable):
        await waiting


async def _rejected(agent: Agent, order_key: str, amount: int = 1) -> RejectReason:
    with pytest.raises(Rejected) as refused:
        await _deduct(agent, order_key, amount)
    return refused.value.reason


async def _update(world: World, **changes: object) -> None:
    revision = world.center.promotion("promo").revision
    await world.center.update_promotion("promo", Update(dict(changes), revision))


async def test_a_running_agent_follows_changed_limits_and_window_from_its_cache(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    served, _, _ = agent
    await _deduct(served, "o-1", 3)

    await _update(world, max_per_order=2)
    await served.catalog.pull()
    assert await _rejected(served, "o-2", 3) is RejectReason.OVER_ORDER_LIMIT
    await _deduct(served, "o-3", 2)

    await _update(world, per_user_limit=5)
    await served.catalog.pull()
    assert await _rejected(served, "o-4", 1) is RejectReason.USER_LIMIT  # "user" already took 5

    await _update(world, per_user_limit=0, end_ms=world.clock.wall_ms() + 5_000)
    await served.catalog.pull()
    await _deduct(served, "o-5", 1)
    world.clock.advance(5)
    assert await _rejected(served, "o-6", 1) is RejectReason.NOT_ACTIVE


async def test_a_region_removed_is_refused_and_gives_back_what_it_holds(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    served, ledger, _ = agent
    await _deduct(served, "o-1", 4)

    await _update(world, regions=("us",))
    await served.catalog.pull()

    assert await _rejected(served, "o-2") is RejectReason.REGION_NOT_ALLOWED

    async def given_back() -> bool:
        return (await _balance(ledger)).available == 0

    await eventually(given_back, timeout_s=5)
    await served.renew_once()
    assert world.eu().held == 0
    assert world.center.usage("promo").unallocated == BUDGET - 4


async def test_an_ended_promotion_is_refused_refunds_still_work_and_everything_comes_back(
    world: World, agent: tuple[Agent, InProcessLedger, DirectCenter]
) -> None:
    served, ledger, _ = agent
    await _deduct(served, "o-1", 6)

    await world.center.end_promotion("promo")
    await served.renew_once()  # its directive names the end's revision, and takes back what eu holds

    assert await _rejected(served, "o-2") is RejectReason.NOT_ACTIVE
    await served.refund("o-1", "r-1", (Line("promo", 2, "user"),))
    assert (await _balance(ledger)).refunded == 2
    await served.renew_once()  # the refunded units go back too
    assert (await _balance(ledger)).available == 0
    assert world.eu().held == 0
    assert world.center.usage("promo").unallocated == BUDGET - 4
