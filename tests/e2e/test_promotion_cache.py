"""The dual-link promotion cache with real processes: a stream cut by a center restart, an agent
restarted while the center is down, and a freeze that brings every region's allotment back.

A promotion served at its start without the center: tests/service/test_midnight_opening.py, on a clock the
test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import redis_server
from quota_testing.support import eventually, order, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

PULL_ONLY = ("--no-push", "--pull-interval", "0.3")
PUSH_ONLY = ("--pull-interval", "3600")


@asynccontextmanager
async def admin_of(center: ServerProcess) -> AsyncIterator[center_grpc.PromotionAdminAsyncStub]:
    async with grpc.aio.insecure_channel(center.address) as channel:
        yield center_grpc.PromotionAdminStub(channel)


@asynccontextmanager
async def orders_of(agent: ServerProcess) -> AsyncIterator[agent_grpc.RegionAgentAsyncStub]:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        yield agent_grpc.RegionAgentStub(channel)


async def status(orders: agent_grpc.RegionAgentAsyncStub) -> agent_pb.RegionStatus:
    return await orders.GetStatus(agent_pb.GetStatusRequest(), timeout=5)


async def newest_revision(admin: center_grpc.PromotionAdminAsyncStub) -> int:
    listed = await admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=5)
    return max(p.revision for p in listed.promotions)


async def center_answers(center: ServerProcess) -> None:
    async with admin_of(center) as admin:

        async def answers() -> bool:
            try:
                await admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually(answers, timeout_s=20)


async def deduct_refused_as(orders: agent_grpc.RegionAgentAsyncStub, key: str, promotion_id: str) -> str | None:
    """The reject reason of a one-unit order, None if it was accepted."""
    try:
        await orders.Deduct(order(key, "eu", (promotion_id, 1)), timeout=5)
    except grpc.aio.AioRpcError as error:
        return reject_reason(error) or error.code().name
    return None


@pytest.mark.parametrize("link", [PULL_ONLY, PUSH_ONLY], ids=["pull_only", "resumed_stream_only"])
async def test_agent_converges_after_the_center_restarts_while_promotions_change(
    tmp_path: Path, link: tuple[str, ...]
) -> None:
    center = center_process(tmp_path).start()
    agent = agent_process(tmp_path, "eu", center.address, *link).start()
    try:
        async with admin_of(center) as admin:
            for n in range(5):
                await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(f"p{n}")), timeout=5)
        center.kill()
        # The stream is cut; the promotions change in the center's store while the agent cannot hear.
        center = center_process(tmp_path, port=center.port).start()
        async with admin_of(center) as admin, orders_of(agent) as orders:
            await center_answers(center)
            await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="p1", frozen=True), timeout=5)
            for n in range(5, 8):
                await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(f"p{n}")), timeout=5)
            await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="p6", frozen=True), timeout=5)
            newest = await newest_revision(admin)

            async def converged() -> bool:
                seen = await status(orders)
                return seen.catalog_revision == newest and seen.cached_promotions == 8

            await eventually(converged, timeout_s=20)
            refusals = {f"p{n}": await deduct_refused_as(orders, f"o-{n}", f"p{n}") for n in range(8)}
            assert refusals == {f"p{n}": "REJECT_REASON_FROZEN" if n in (1, 6) else None for n in range(8)}
            assert (await status(orders)).promotion_fetches == 0
    finally:
        agent.kill()
        center.kill()


async def test_an_agent_restarted_while_the_center_is_down_serves_from_the_regions_redis(tmp_path: Path) -> None:
    with redis_server() as redis:
        ledger = ("--ledger", f"redis://{redis.address}/0")
        center = center_process(tmp_path).start()
        agent = agent_process(tmp_path, "eu", center.address, *ledger).start()
        try:
            async with admin_of(center) as admin:
                await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion("a")), timeout=5)
                await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion("b")), timeout=5)
                await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="b", frozen=True), timeout=5)
                newest = await newest_revision(admin)
            async with orders_of(agent) as orders:
                await orders.Deduct(order("warm-up", "eu", ("a", 1)), timeout=5)
                await eventually(lambda: _revision_reached(orders, newest))
            center.kill()
            agent.kill()
            agent = agent_process(tmp_path, "eu", center.address, *ledger).start()
            async with orders_of(agent) as orders:
                seen = await status(orders)
                assert (seen.catalog_revision, seen.cached_promotions) == (newest, 2)
                assert await deduct_refused_as(orders, "after-restart", "a") is None
                assert await deduct_refused_as(orders, "frozen", "b") == "REJECT_REASON_FROZEN"
                assert (await status(orders)).promotion_fetches == 0
        finally:
            agent.kill()
            center.kill()


async def _revision_reached(orders: agent_grpc.RegionAgentAsyncStub, revision: int) -> bool:
    return (await status(orders)).catalog_revision >= revision


async def test_a_freeze_gives_every_regions_unspent_allotment_back_to_the_center(tmp_path: Path) -> None:
    center = center_process(tmp_path).start()
    agents = [agent_process(tmp_path, region, center.address).start() for region in ("eu", "us")]
    try:
        async with admin_of(center) as admin:
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)), timeout=5)
            for agent, region in zip(agents, ("eu", "us"), strict=True):
                async with orders_of(agent) as orders:
                    await orders.Deduct(order(f"{region}-1", region, ("promo", 3)), timeout=5)
            usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
            assert all(region.granted > 3 for region in usage.regions)

            await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="promo", frozen=True), timeout=5)

            async def all_returned() -> bool:
                usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
                return all(region.held == 0 and region.consumed == 3 for region in usage.regions)

            # The push stream, the next pull or the next renewal brings the freeze; whichever comes first.
            await eventually(all_returned, timeout_s=30)
            usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
            assert usage.unallocated == 1_000 - 6
    finally:
        for process in [*agents, center]:
            process.kill()
