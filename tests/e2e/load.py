"""Order traffic for end-to-end tests: workers that sell until told to stop, and the count."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.support import order


@dataclass
class Tally:
    acked: dict[str, int]
    failed: int = 0


async def sell_until(
    worker: int, stop: asyncio.Event, stubs: dict[str, agent_grpc.RegionAgentAsyncStub], tally: Tally
) -> None:
    number = 0
    while not stop.is_set():
        for region, stub in stubs.items():
            number += 1
            try:
                await stub.Deduct(order(f"w{worker}-o{number}", region, ("promo", 1)), timeout=3)
            except grpc.aio.AioRpcError:
                tally.failed += 1
                continue
            tally.acked[region] += 1


async def deducted_by_region(stubs: dict[str, agent_grpc.RegionAgentAsyncStub]) -> dict[str, int]:
    deducted = {}
    for region, stub in stubs.items():
        status = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=2)
        deducted[region] = status.balances[0].deducted
    return deducted
