"""SIGTERM under load (a rolling update, a node drain): the agent stops taking calls, finishes the
ones in flight, reports, and nothing it acknowledged is lost from the center's books."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import redis_server
from quota_testing.support import eventually, order, promotion
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

BUDGET = 1_000_000
CLIENTS = 12
ORDERS_BEFORE_SIGTERM = 100
"""SIGTERM comes once this many orders were acknowledged, so it meets a running load however slow the machine."""


# A call that reaches a stopping server before its handler starts is refused with either; the
# caller retries it with the same order key (on another agent of the region, or this one restarted).
REFUSED_WHILE_STOPPING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


@dataclass
class Tally:
    acknowledged: int = 0
    unexpected: list[grpc.aio.AioRpcError] = field(default_factory=list)


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
        return
    with redis_server() as store:
        yield f"redis://{store.address}/0"


async def _order_services(address: str, stopping: asyncio.Event, tally: Tally) -> None:
    """Order services deducting one unit per order until the agent stops answering."""
    keys = itertools.count()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_grpc.RegionAgentStub(channel)

        async def client() -> None:
            while True:
                key = f"o-{next(keys)}"
                try:
                    await stub.Deduct(order(key, "eu", ("promo", 1), user_id=key), timeout=10)
                except grpc.aio.AioRpcError as error:
                    if not (stopping.is_set() and error.code() in REFUSED_WHILE_STOPPING):
                        tally.unexpected.append(error)
                    return
                tally.acknowledged += 1

        await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def test_sigterm_under_load_loses_no_acknowledged_deduction(tmp_path: Path, ledger: str) -> None:
    center = center_process(tmp_path).start()
    agent: ServerProcess | None = None
    try:
        async with grpc.aio.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=BUDGET)))
            agent = agent_process(tmp_path, "eu", center.address, "--ledger", ledger, "--renew-interval", "0.2")
            agent.start()
            tally, stopping = Tally(), asyncio.Event()
            load = asyncio.create_task(_order_services(agent.address, stopping, tally))

            async def load_runs() -> bool:
                return tally.acknowledged >= ORDERS_BEFORE_SIGTERM

            await eventually(load_runs)
            stopping.set()
            agent.stop(timeout_s=20)
            await asyncio.wait_for(load, 20)
            assert agent.popen is not None
            assert agent.popen.returncode == 0, "the agent stopped by itself, not killed after the timeout"

            async def books() -> center_pb.RegionUsage:
                usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
                return next(region for region in usage.regions if region.region == "eu")

            if ledger != "memory":
                # The Redis ledger outlives the process: the region's next agent reports it.
                agent = agent_process(tmp_path, "eu", center.address, "--ledger", ledger, "--renew-interval", "0.2")
                agent.start()

                async def reported() -> bool:
                    return (await books()).consumed >= tally.acknowledged

                await eventually(reported)
            eu = await books()
    finally:
        if agent is not None:
            agent.kill()
        center.kill()

    assert tally.unexpected == []
    # Every acknowledged order is on the books, and no refused one: in-flight calls finished.
    assert eu.consumed == tally.acknowledged
    if ledger == "memory":
        # An in-process ledger dies with the process: everything unspent went back to the center.
        assert eu.held == 0
        assert eu.granted - eu.returned == tally.acknowledged
