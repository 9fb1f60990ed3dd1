"""An agent on the region's Redis ledger: killed and restarted, it loses nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from quota_center.launch import agent_process, center_process
from quota_center.testing_servers import redis_server
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.support import eventually, order, promotion

pytestmark = pytest.mark.e2e


async def test_an_agent_killed_and_restarted_on_redis_keeps_its_orders_and_quota(tmp_path: Path) -> None:
    with redis_server() as redis:
        center = center_process(tmp_path).start()
        ledger = ("--ledger", f"redis://{redis.address}/0", "--renew-interval", "0.2")
        first = agent_process(tmp_path, "eu", center.address, *ledger).start()
        try:
            async with grpc.aio.insecure_channel(center.address) as channel:
                admin = center_grpc.PromotionAdminStub(channel)
                await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
                async with grpc.aio.insecure_channel(first.address) as orders:
                    stub = agent_grpc.RegionAgentStub(orders)
                    for number in range(10):
                        await stub.Deduct(order(f"o-{number}", "eu", ("promo", 1)), timeout=5)
                    before = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)

                first.kill()
                second = agent_process(tmp_path, "eu", center.address, *ledger).start()
                try:
                    async with grpc.aio.insecure_channel(second.address) as orders:
                        stub = agent_grpc.RegionAgentStub(orders)
                        replay = await stub.Deduct(order("o-3", "eu", ("promo", 1)), timeout=5)
                        await stub.Deduct(order("o-10", "eu", ("promo", 1)), timeout=5)
                        after = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)

                        async def reported() -> bool:
                            usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
                            return usage.regions[0].consumed == 11

                        await eventually(reported)
                        usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
                finally:
                    second.kill()
        finally:
            first.kill()
            center.kill()

    assert replay.replayed
    assert after.incarnation == before.incarnation
    assert after.balances[0].deducted == 11
    assert after.balances[0].granted >= before.balances[0].granted
    assert usage.regions[0].written_off == 0
