"""One region on the region's Redis, as real processes: a center and N agents sharing one Redis
ledger, with promotion "promo" created, for the end-to-end tests of the Redis ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import redis_server
from quota_testing.support import promotion
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc


@dataclass
class RedisRegion:
    center: ServerProcess
    agents: list[ServerProcess]
    admin: center_grpc.PromotionAdminAsyncStub
    stubs: list[agent_grpc.RegionAgentAsyncStub]

    async def usage(self) -> center_pb.Usage:
        return await self.admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)


@asynccontextmanager
async def region_on_redis(
    workdir: Path,
    redis_address: str,
    budget: int,
    agents: int = 1,
    renew_interval: str = "0.2",
    center_flags: tuple[str, ...] = (),
    redis_options: str = "",
) -> AsyncIterator[RedisRegion]:
    """Kills every process when the block ends, however it ends. `redis_options`: the query of the agents'
    ledger URL (redis-py's connection options, "socket_timeout=1")."""
    center = center_process(workdir, *center_flags).start()
    query = f"?{redis_options}" if redis_options else ""
    ledger = ("--ledger", f"redis://{redis_address}/0{query}", "--renew-interval", renew_interval)
    processes = [agent_process(workdir, "eu", center.address, *ledger).start() for _ in range(agents)]
    channels = [grpc.aio.insecure_channel(agent.address) for agent in processes]
    try:
        async with grpc.aio.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=budget)))
            yield RedisRegion(center, processes, admin, [agent_grpc.RegionAgentStub(c) for c in channels])
    finally:
        for open_channel in channels:
            await open_channel.close()
        for process in [*processes, center]:
            process.kill()


@dataclass(frozen=True)
class RegionAddresses:
    center: str
    agents: tuple[str, str]


@contextmanager
def two_agents_on_redis(workdir: Path) -> Iterator[RegionAddresses]:
    """A center and two agents of region eu on a Redis of their own, as processes, for a test module that
    starts them once and works on promotions of its own in each test. Kills them all when the block ends."""
    with redis_server() as redis:
        processes: list[ServerProcess] = []
        try:
            center = center_process(workdir).start()
            processes.append(center)
            ledger = ("--ledger", f"redis://{redis.address}/0", "--renew-interval", "0.2")
            for _ in range(2):
                processes.append(agent_process(workdir, "eu", center.address, *ledger).start())
            yield RegionAddresses(center.address, (processes[1].address, processes[2].address))
        finally:
            for process in reversed(processes):
                process.kill()
