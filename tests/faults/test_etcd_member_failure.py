"""The center on a 3-member etcd cluster keeps serving while one member is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from loadtest.bench import OrderTally, deducted_by_region, sell_until
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import AsyncQuotaClient
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import etcd_cluster
from quota_testing.support import eventually, promotion

pytestmark = pytest.mark.e2e


async def _leads(admin: center_grpc.PromotionAdminAsyncStub) -> bool:
    try:
        await admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return True


async def test_one_member_down_then_back_loses_nothing(tmp_path: Path) -> None:
    with etcd_cluster(3) as members:
        store = "etcd://" + ",".join(member.address for member in members) + "/quota"
        processes: list[ServerProcess] = []
        try:
            center = center_process(tmp_path, "--election-ttl", "2", store=store).start()
            processes.append(center)
            for region in ("eu", "us"):
                processes.append(agent_process(tmp_path, region, center.address, "--renew-interval", "0.2").start())
            async with grpc.aio.insecure_channel(center.address) as channel:
                admin = center_grpc.PromotionAdminStub(channel)
                await eventually(lambda: _leads(admin), timeout_s=15)
                await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=200_000)))
                agents = zip(("eu", "us"), processes[1:], strict=True)
                clients = {region: AsyncQuotaClient(agent.address, region) for region, agent in agents}
                stop, tally = asyncio.Event(), OrderTally(dict.fromkeys(clients, 0))
                selling = [asyncio.create_task(sell_until(w, stop, clients, tally)) for w in range(4)]

                await asyncio.sleep(0.5)
                members[0].stop()
                acked_while_down = sum(tally.acked.values())
                await asyncio.sleep(2.0)
                acked_while_down = sum(tally.acked.values()) - acked_while_down
                members[0].start()
                await asyncio.sleep(0.5)
                stop.set()
                await asyncio.gather(*selling)

                async def reports_caught_up() -> bool:
                    usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=2)
                    return {r.region: r.consumed for r in usage.regions} == await deducted_by_region(clients)

                await eventually(reports_caught_up, timeout_s=15)
                usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=2)
                deducted = await deducted_by_region(clients)
                for client in clients.values():
                    await client.close()
        finally:
            for process in processes:
                process.kill()

    assert acked_while_down > 0
    assert all(deducted[region] >= acked for region, acked in tally.acked.items())
    assert usage.unallocated == 200_000 - sum(r.granted - r.returned for r in usage.regions)
    assert sum(r.consumed for r in usage.regions) <= 200_000
