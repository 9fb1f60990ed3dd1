"""What a Join says of the region's earlier ledger lives, over gRPC: whether one held quota at the center (then
orders placed in it may be lost with it), and, from a center too old to say, that one may have."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as pb
from quota_common.errors import RegionHeld
from quota_common.model import Kind, Promotion
from quota_common.rpc import Context
from quota_testing.inprocess import running_center
from region_agent.grpc_center import GrpcCenter

HOUR_MS = 3_600_000


async def test_a_join_says_whether_an_earlier_life_of_the_region_held_quota(tmp_path: Path) -> None:
    async with running_center(tmp_path) as served:
        now = int(time.time() * 1000)
        await served.center.create_promotion(
            Promotion("coupon", Kind.COUNT, "", 100, now - HOUR_MS, now + HOUR_MS, ("eu", "us"))
        )
        eu, us = GrpcCenter([served.address], "eu"), GrpcCenter([served.address], "us")
        try:
            first = await eu.join("")
            idle = await us.join("")
            await eu.acquire(first.incarnation, "coupon", 10, "grant-1", 0)
            with pytest.raises(RegionHeld) as held:  # another ledger's agent would write off what it holds
                await eu.join("")

            after_holding = await eu.join(first.incarnation)  # as after its Redis lost its data
            after_idle = await us.join(idle.incarnation)  # a Join holds the region for the life it issues
        finally:
            await eu.close()
            await us.close()

    assert 0 < held.value.retry_after_s <= served.center.settings.lease_ttl_s
    assert first.incarnation in held.value.message
    assert (first.after_earlier_life, idle.after_earlier_life) == (False, False)
    assert after_holding.after_earlier_life  # eu's first life held quota: its orders may be gone with it
    assert not after_idle.after_earlier_life  # us's held none, so it accepted no order


async def _old_join(request: pb.JoinRequest, context: Context) -> pb.JoinResponse:
    """Join as a center from before JoinResponse.after_earlier_life answers it."""
    return pb.JoinResponse(incarnation="life-1")


async def test_a_center_that_does_not_say_leaves_an_earlier_life_possible() -> None:
    server = grpc.aio.server()
    join = grpc.unary_unary_rpc_method_handler(
        _old_join, request_deserializer=pb.JoinRequest.FromString, response_serializer=pb.JoinResponse.SerializeToString
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("quota_center.v1.Allocation", {"Join": join})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    center = GrpcCenter([f"127.0.0.1:{port}"], "eu")
    try:
        joined = await center.join("")
    finally:
        await center.close()
        await server.stop(None)

    assert (joined.incarnation, joined.after_earlier_life) == ("life-1", True)
