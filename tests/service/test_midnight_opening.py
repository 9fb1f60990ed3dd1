"""Promotions open at midnight with no stampede on the center, on a clock the test moves.

The agents know every promotion before it starts (the catalog reaches them by push and pull) and
take an opening allotment of each, in batches, once it starts within the look-ahead; the opening
itself then needs no fetch and no acquire. How fast this goes on real hardware is a benchmark
figure, not something these tests assert: they wait as long as the machine needs and check what
happened.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.clock import FakeClock
from quota_common.validation import MAX_OPENINGS
from quota_testing.inprocess import ServedCenter, running_agent, running_center
from quota_testing.support import eventually, order, promotion, reject_reason
from region_agent.agent import AgentSettings
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

REGIONS = ("eu", "us", "ap")
LOOKAHEAD_S = 30.0
LEAD_S = 60.0
"""The promotions are created this long before they start: beyond the look-ahead."""
SETTLING_S = 90.0
"""A bound for a hang, not a speed: the catalog and the openings arrive as fast as the machine allows."""
PERIODIC = {"Renew", "ListChanges", "Watch"}
"""Calls every agent makes on its own schedule, whatever opens."""


class CallsSeen(grpc.aio.ServerInterceptor):
    """The center's calls by method name, as its server receives them."""

    def __init__(self) -> None:
        self.methods: Counter[str] = Counter()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        self.methods[details.method.rpartition("/")[2]] += 1
        return await continuation(details)


@dataclass
class Opening:
    """A center and one agent per region, all on one clock that moves only when the test moves it."""

    clock: FakeClock
    center: ServedCenter
    seen: CallsSeen
    agents: dict[str, agent_grpc.RegionAgentAsyncStub]
    start_ms: int

    async def statuses(self) -> list[agent_pb.RegionStatus]:
        return [await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=30) for stub in self.agents.values()]

    async def create(self, promotion_ids: list[str], budget: int) -> None:
        async with grpc.aio.insecure_channel(self.center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            pending = list(promotion_ids)

            async def creator() -> None:
                while pending:
                    fresh = promotion(pending.pop(), budget, REGIONS, self.start_ms, self.start_ms + 3_600_000)
                    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=fresh), timeout=30)

            await asyncio.gather(*(creator() for _ in range(16)))

    async def every_region_caches(self, count: int) -> None:
        async def cached() -> bool:
            return all(seen.cached_promotions == count for seen in await self.statuses())

        await eventually(cached, timeout_s=SETTLING_S)

    async def every_region_opens(self, count: int) -> None:
        async def opened() -> bool:
            return all(opened_in(seen) == count for seen in await self.statuses())

        await eventually(opened, timeout_s=SETTLING_S)


def opened_in(seen: agent_pb.RegionStatus) -> int:
    """Promotions the region holds an opening allotment of."""
    return sum(1 for balance in seen.balances if balance.available > 0)


@asynccontextmanager
async def opening(tmp_path: Path, center_stack: AsyncExitStack) -> AsyncIterator[Opening]:
    """`center_stack` owns the center, so a test can stop it while the agents go on serving."""
    clock, seen = FakeClock(), CallsSeen()
    center = await center_stack.enter_async_context(running_center(tmp_path, clock=clock, interceptors=[seen]))
    # Nothing to give back at the end: what the agents hold dies with the test.
    settings = {
        region: AgentSettings(region, opening_lookahead_s=LOOKAHEAD_S, return_on_shutdown=False) for region in REGIONS
    }
    async with AsyncExitStack() as agents:
        stubs = {}
        for region in REGIONS:
            served = await agents.enter_async_context(
                running_agent(region, center.address, settings[region], clock=clock)
            )
            channel = await agents.enter_async_context(grpc.aio.insecure_channel(served.address))
            stubs[region] = agent_grpc.RegionAgentStub(channel)
        yield Opening(clock, center, seen, stubs, clock.wall_ms() + round(LEAD_S * 1000))


async def test_thousands_of_promotions_open_at_once_in_batches_without_a_burst_on_the_center(tmp_path: Path) -> None:
    promotions = 2 * MAX_OPENINGS + 500
    promotion_ids = [f"midnight-{n:05d}" for n in range(promotions)]
    async with AsyncExitStack() as center_stack, opening(tmp_path, center_stack) as world:
        await world.create(promotion_ids, budget=100)
        await world.every_region_caches(promotions)
        assert [opened_in(seen) for seen in await world.statuses()] == [0] * len(REGIONS), "opened beyond look-ahead"

        before = world.seen.methods.copy()
        world.clock.advance(LEAD_S - 1)  # every promotion now starts within the look-ahead
        await world.every_region_opens(promotions)
        world.clock.advance(1)
        picks = random.Random(7).sample(promotion_ids, 300)
        await asyncio.gather(
            *(
                stub.Deduct(order(f"{region}-{promotion_id}", region, (promotion_id, 1)), timeout=30)
                for region, stub in world.agents.items()
                for promotion_id in picks
            )
        )
        during = world.seen.methods - before

        after = await world.statuses()
        assert [sum(b.deducted for b in seen.balances) for seen in after] == [len(picks)] * len(REGIONS)
        assert all(seen.promotion_fetches == 0 for seen in after), "a promotion was fetched on the order path"
        batches = len(REGIONS) * math.ceil(promotions / MAX_OPENINGS)
        burst = {method: calls for method, calls in during.items() if method not in PERIODIC}
        # A batch the center answered too late for the agent is retried with the same request ids.
        assert burst.keys() == {"AcquireOpenings"}, burst
        assert batches <= burst["AcquireOpenings"] <= 2 * batches, burst


async def test_an_opened_promotion_is_served_at_its_start_with_the_center_gone(tmp_path: Path) -> None:
    async with AsyncExitStack() as center_stack, opening(tmp_path, center_stack) as world:
        await world.create(["midnight"], budget=600)
        await world.every_region_caches(1)
        world.clock.advance(LEAD_S - 1)
        await world.every_region_opens(1)
        await center_stack.aclose()  # from here on, a center call on the order path would fail
        eu = world.agents["eu"]
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await eu.Deduct(order("too-early", "eu", ("midnight", 1)), timeout=30)
        assert reject_reason(early.value) == "REJECT_REASON_NOT_ACTIVE"
        world.clock.advance(1)
        answers = await asyncio.gather(
            *(eu.Deduct(order(f"o-{n}", "eu", ("midnight", 1)), timeout=30) for n in range(20))
        )
        assert all(not answer.replayed for answer in answers)
        (seen,) = [s for s in await world.statuses() if s.region == "eu"]
        assert seen.promotion_fetches == 0
        assert {b.promotion_id: b.deducted for b in seen.balances}["midnight"] == 20
