"""Crashes under load on the Redis ledger: kill -9 of an agent, kill -9 of Redis itself.

Order services retry a failed call with the same order key (on another agent of the region if
theirs is gone), as they must. Afterwards every acknowledged order is in the ledger exactly
once: the ledger's deducted count equals the number of acknowledged orders, every one of them
replays, and the center accounts the same figure.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.redis_region import region_on_redis
from quota_testing.servers import redis_process
from quota_testing.support import eventually, order
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

ORDERS = 1_500
CRASH_AFTER = 400
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class Load:
    """Order services: each order is retried with its key until answered, moving to the next agent on failure."""

    stubs: list[agent_grpc.RegionAgentAsyncStub]
    acked: set[str] = field(default_factory=set)
    failures: Counter[grpc.StatusCode] = field(default_factory=Counter)
    midway: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, workers: int, crash: Callable[[], Awaitable[None]]) -> None:
        keys = iter(f"o-{number}" for number in range(ORDERS))

        async def worker(first: int) -> None:
            for key in keys:
                await self._until_answered(key, first % len(self.stubs))

        async def crash_midway() -> None:
            await self.midway.wait()
            await crash()

        await asyncio.wait_for(asyncio.gather(crash_midway(), *(worker(n) for n in range(workers))), timeout=90)

    async def _until_answered(self, key: str, agent: int) -> None:
        while True:
            try:
                await self.stubs[agent].Deduct(order(key, "eu", ("promo", 1)), timeout=5)
            except grpc.aio.AioRpcError as error:
                self.failures[error.code()] += 1
                if error.code() not in RETRYABLE:
                    return
                agent = (agent + 1) % len(self.stubs)
                await asyncio.sleep(0.05)
                continue
            self.acked.add(key)
            if len(self.acked) == CRASH_AFTER:
                self.midway.set()
            return


async def replayed(stub: agent_grpc.RegionAgentAsyncStub, keys: set[str]) -> int:
    """How many of `keys` the ledger answers as already deducted."""
    answers = [await stub.Deduct(order(key, "eu", ("promo", 1)), timeout=5) for key in sorted(keys)]
    return sum(answer.replayed for answer in answers)


async def settled_consumed(admin: center_grpc.PromotionAdminAsyncStub, expected: int) -> center_pb.Usage:
    async def reported() -> bool:
        usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
        return sum(region.consumed for region in usage.regions) == expected

    await eventually(reported)
    return await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)


async def test_an_agent_killed_under_load_loses_no_acknowledged_order(tmp_path: Path) -> None:
    with redis_process() as redis:
        async with region_on_redis(tmp_path, redis.address, budget=ORDERS, agents=2) as region:
            load = Load(region.stubs)

            async def kill_first_agent() -> None:
                region.agents[0].kill()

            await load.run(workers=8, crash=kill_first_agent)
            survivor = load.stubs[1]
            status = await survivor.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            replays = await replayed(survivor, load.acked)
            usage = await settled_consumed(region.admin, len(load.acked))

    assert set(load.failures) <= RETRYABLE
    assert len(load.acked) == ORDERS
    assert load.failures[grpc.StatusCode.UNAVAILABLE] > 0, "the kill happened while orders were in flight"
    assert status.balances[0].deducted == ORDERS
    assert replays == ORDERS
    assert usage.regions[0].written_off == 0


async def test_redis_killed_under_load_and_restarted_from_its_aof_keeps_every_order_once(tmp_path: Path) -> None:
    with redis_process() as redis:
        async with region_on_redis(tmp_path, redis.address, budget=ORDERS) as region:
            stub = region.stubs[0]
            before = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            load = Load([stub])

            async def restart_redis() -> None:
                redis.kill()
                await asyncio.sleep(0.5)
                redis.start()

            await load.run(workers=8, crash=restart_redis)
            status = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            replays = await replayed(stub, load.acked)
            usage = await settled_consumed(region.admin, len(load.acked))

    assert set(load.failures) <= RETRYABLE
    assert len(load.acked) == ORDERS
    assert load.failures[grpc.StatusCode.UNAVAILABLE] > 0, "orders were refused while Redis was down"
    assert status.incarnation == before.incarnation, "the AOF kept the ledger: no new life, nothing written off"
    assert status.balances[0].deducted == ORDERS
    assert replays == ORDERS
    assert usage.regions[0].written_off == 0
