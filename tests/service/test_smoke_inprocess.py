"""An order deducts from the region's allotment, refilled from the center on demand."""

from __future__ import annotations

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.support import eventually, order, promotion
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc


async def test_first_order_waits_for_a_grant_and_is_counted_at_the_center(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=100)))

    answer = await orders_eu.Deduct(order("o-1", "eu", ("promo", 3)), timeout=5)

    assert [(line.promotion_id, line.amount) for line in answer.lines] == [("promo", 3)]

    async def center_agrees() -> bool:
        (balance,) = (await orders_eu.GetStatus(agent_pb.GetStatusRequest())).balances
        usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"))
        assert balance.deducted == 3
        assert balance.available == balance.granted - balance.deducted
        return usage.unallocated == 100 - balance.granted and usage.regions[0].consumed == 3

    await eventually(center_agrees)
