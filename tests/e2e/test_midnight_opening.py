"""10,000 promotions open in the same second across three agents: no stampede on the center.

The agents know every promotion before it starts (the catalog reaches them by push and pull) and
hold an opening allotment of each (acquired in batches during the look-ahead), so the opening
itself needs no fetch and no acquire.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest

from quota_center.launch import agent_process, center_process
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.support import now_ms, order, promotion

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PROMOTIONS = 10_000
REGIONS = ("eu", "us", "ap")
ORDERS_AT_OPENING = 300
"""Per agent, each on a different promotion, all sent in the opening's first moment."""


async def create_all(admin: center_grpc.PromotionAdminAsyncStub, start_ms: int) -> None:
    pending = [f"midnight-{n:05d}" for n in range(PROMOTIONS)]

    async def worker() -> None:
        while pending:
            promotion_id = pending.pop()
            fresh = promotion(promotion_id, budget=100, regions=REGIONS, start_ms=start_ms, end_ms=start_ms + 3_600_000)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=fresh), timeout=30)

    await asyncio.gather(*(worker() for _ in range(16)))


async def test_ten_thousand_promotions_open_at_once_without_a_burst_on_the_center(tmp_path: Path) -> None:
    center = center_process(tmp_path).start()
    # A look-ahead as long as the lead: the agents open promotions as they are created, so on a slow
    # machine the openings have the whole lead to finish, not only its last 30 s (the default).
    lookahead = ("--opening-lookahead", "50")
    agents = [agent_process(tmp_path, region, center.address, *lookahead).start() for region in REGIONS]
    channels = [grpc.aio.insecure_channel(agent.address) for agent in agents]
    try:
        stubs = [agent_grpc.RegionAgentStub(channel) for channel in channels]
        async with grpc.aio.insecure_channel(center.address) as channel:
            # Creating them takes about 15 s here, and the three agents' openings about 15 s more.
            start_ms = now_ms() + 55_000
            await create_all(center_grpc.PromotionAdminStub(channel), start_ms)

        async def opened() -> int:
            """Promotions every agent holds an opening allotment of."""
            counts = []
            for stub in stubs:
                seen = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=10)
                counts.append(sum(1 for b in seen.balances if b.available > 0))
            return min(counts)

        while await opened() < PROMOTIONS:
            assert now_ms() < start_ms - 500, (
                f"only {await opened()} promotions opened in every region before the start"
            )
            await asyncio.sleep(1)
        await asyncio.sleep(max(0.0, (start_ms - now_ms()) / 1000) + 0.01)
        before = [await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=10) for stub in stubs]
        assert all(seen.cached_promotions == PROMOTIONS for seen in before)
        opened_at = time.monotonic()
        picks = random.Random(7).sample(range(PROMOTIONS), ORDERS_AT_OPENING)
        answers = await asyncio.gather(
            *(
                stub.Deduct(order(f"{region}-{n}", region, (f"midnight-{n:05d}", 1)), timeout=5)
                for stub, region in zip(stubs, REGIONS, strict=True)
                for n in picks
            )
        )
        opening_s = time.monotonic() - opened_at
        after = [await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=10) for stub in stubs]

        assert len(answers) == ORDERS_AT_OPENING * len(REGIONS)
        assert all(seen.promotion_fetches == 0 for seen in after), "a promotion was fetched on the order path"
        calls_during_opening = [a.center_calls - b.center_calls for a, b in zip(after, before, strict=True)]
        # Renewals and pulls go on (about one each per few seconds); no per-promotion call does.
        assert all(calls <= 4 + 2 * opening_s for calls in calls_during_opening), (calls_during_opening, opening_s)
    finally:
        for open_channel in channels:
            await open_channel.close()
        for process in [*agents, center]:
            process.kill()
