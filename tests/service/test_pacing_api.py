"""A paced promotion through the center's API: what is granted follows the release curve."""

from __future__ import annotations

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.inprocess import issued_incarnation
from quota_testing.support import HOUR_MS, now_ms, promotion


async def test_a_linear_promotion_grants_only_what_its_window_has_released(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    paced = promotion("paced", budget=4_000, start_ms=now_ms() - HOUR_MS, end_ms=now_ms() + 3 * HOUR_MS)
    paced.pacing = pb.PACING_LINEAR
    created = await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=paced), timeout=5)
    agent = pb.AgentIdentity(region="eu", incarnation=issued_incarnation(1))

    def ask(request_id: str) -> pb.AcquireRequest:
        return pb.AcquireRequest(agent=agent, promotion_id="paced", amount=4_000, request_id=request_id)

    first = await allocation.Acquire(ask("r-1"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await allocation.Acquire(ask("r-2"), timeout=5)

    assert created.pacing == pb.PACING_LINEAR
    assert 990 <= first.grant.amount <= 1_010  # a quarter of the window has passed
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "paced" in (refused.value.details() or "")
