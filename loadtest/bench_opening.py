"""`quota bench opening`: how long a region's agents take to open many promotions that start together.

The center runs as a real process on loopback and holds N promotions that start within the agents'
look-ahead; then three agents start, learn the catalog and take an opening allotment of every
promotion. The figure is the time from starting the agents (their start-up included) until every
one holds an allotment of every promotion, with the calls each agent made to the center meanwhile
(batched openings, catalog pages and renewals: nothing per promotion). The default suite checks that
behaviour on a clock the test moves (tests/service/test_midnight_opening.py); how fast it goes on this
machine is this figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient
from quota_testing.launch import ServerProcess, agent_process, center_process, kill_all

REGIONS = ("eu", "us", "ap")
LOOKAHEAD_S = 3_600
"""Covers the start (half of it away), so the benchmark never waits for the clock."""
CREATORS = 16
POLL_S = 0.2
"""The figure's resolution."""


def _upcoming(promotion_id: str) -> pb.Promotion:
    start_ms = time.time_ns() // 1_000_000 + LOOKAHEAD_S * 1000 // 2
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(start_ms)
    end.FromMilliseconds(start_ms + LOOKAHEAD_S * 1000)
    return pb.Promotion(
        id=promotion_id, kind=pb.PROMOTION_KIND_COUNT, budget=100, start_time=start, end_time=end, regions=list(REGIONS)
    )


async def _create(address: str, promotions: int) -> None:
    pending = [f"opening-{n:06d}" for n in range(promotions)]
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)

        async def creator() -> None:
            while pending:
                await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=_upcoming(pending.pop())), timeout=30)

        await asyncio.gather(*(creator() for _ in range(CREATORS)))


async def _open_all(agents: dict[str, AsyncQuotaClient], promotions: int) -> dict[str, int]:
    """Waits until every agent holds an allotment of every promotion; its calls to the center."""
    while True:
        statuses = {region: await agent.status(deadline_s=30) for region, agent in agents.items()}
        if all(sum(1 for b in s.balances if b.available > 0) == promotions for s in statuses.values()):
            return {region: status.center_calls for region, status in statuses.items()}
        await asyncio.sleep(POLL_S)


async def _measure(promotions: int, workdir: Path) -> dict[str, Any]:
    processes: list[ServerProcess] = []
    async with contextlib.AsyncExitStack() as opened:
        opened.callback(kill_all, processes)  # last, after the links to them closed
        center = center_process(workdir).start()
        processes.append(center)
        await _create(center.address, promotions)
        lookahead = ("--opening-lookahead", str(LOOKAHEAD_S))
        started = time.perf_counter()
        for region in REGIONS:
            processes.append(agent_process(workdir, region, center.address, *lookahead).start())
        agents = {
            region: await opened.enter_async_context(AsyncQuotaClient(agent.address, region))
            for region, agent in zip(REGIONS, processes[1:], strict=True)
        }
        center_calls = await _open_all(agents, promotions)
        open_s = time.perf_counter() - started
    return {
        "promotions": promotions,
        "regions": len(REGIONS),
        "open_s": round(open_s, 2),
        "openings_per_s": round(promotions * len(REGIONS) / open_s),
        "center_calls": center_calls,
    }


async def bench_opening(promotions: int = 10_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quota-bench-opening-") as workdir:
        return await _measure(promotions, Path(workdir))
