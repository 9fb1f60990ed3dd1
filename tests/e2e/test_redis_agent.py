"""An agent on the region's Redis ledger: killed and restarted, it loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process, run_quota
from quota_testing.redis_region import region_on_redis
from quota_testing.servers import redis_server
from quota_testing.support import eventually, order, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e


class _Region:
    """A center and the region's agents on one Redis, each a process of its own."""

    def __init__(self, workdir: Path, redis_address: str, renew_interval: str) -> None:
        self._workdir = workdir
        self._ledger = ("--ledger", f"redis://{redis_address}/0", "--renew-interval", renew_interval)
        self.center = center_process(workdir).start()
        self._agents: list[ServerProcess] = []

    def agent(self) -> ServerProcess:
        agent = agent_process(self._workdir, "eu", self.center.address, *self._ledger).start()
        self._agents.append(agent)
        return agent

    def kill(self) -> None:
        for process in (*self._agents, self.center):
            process.kill()


@contextlib.asynccontextmanager
async def _region(workdir: Path, redis_address: str, renew_interval: str) -> AsyncIterator[_Region]:
    """The region, with promotion "promo" (budget 1,000) created at its center."""
    region = _Region(workdir, redis_address, renew_interval)
    try:
        async with grpc.aio.insecure_channel(region.center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
        yield region
    finally:
        region.kill()


async def test_an_agent_killed_and_restarted_on_redis_keeps_its_orders_and_quota(tmp_path: Path) -> None:
    with redis_server() as redis:
        async with _region(tmp_path, redis.address, renew_interval="0.2") as region:
            first = region.agent()
            async with grpc.aio.insecure_channel(first.address) as orders:
                stub = agent_grpc.RegionAgentStub(orders)
                for number in range(10):
                    await stub.Deduct(order(f"o-{number}", "eu", ("promo", 1)), timeout=5)
                before = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)

            first.kill()
            second = region.agent()
            async with (
                grpc.aio.insecure_channel(second.address) as orders,
                grpc.aio.insecure_channel(region.center.address) as channel,
            ):
                admin = center_grpc.PromotionAdminStub(channel)
                stub = agent_grpc.RegionAgentStub(orders)
                replay = await stub.Deduct(order("o-3", "eu", ("promo", 1)), timeout=5)
                await stub.Deduct(order("o-10", "eu", ("promo", 1)), timeout=5)
                after = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)

                async def reported() -> bool:
                    usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
                    return usage.regions[0].consumed == 11

                await eventually(reported)
                usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)

    assert replay.replayed
    assert after.incarnation == before.incarnation
    assert after.balances[0].deducted == 11
    assert after.balances[0].granted >= before.balances[0].granted
    assert usage.regions[0].written_off == 0


async def test_an_agent_restarted_while_the_center_is_away_spends_what_redis_holds_for_one_lease_only(
    tmp_path: Path,
) -> None:
    # The agent assumes a lease of three renew intervals until the center states its own: long enough
    # for a busy machine to start the second agent and serve one order within it.
    renew_interval_s = 1.0
    with redis_server() as redis:
        async with _region(tmp_path, redis.address, renew_interval=str(renew_interval_s)) as region:
            first = region.agent()
            async with grpc.aio.insecure_channel(first.address) as orders:
                await agent_grpc.RegionAgentStub(orders).Deduct(order("o-1", "eu", ("promo", 1)), timeout=5)
            first.kill()
            region.center.kill()

            async with grpc.aio.insecure_channel(region.agent().address) as orders:
                stub = agent_grpc.RegionAgentStub(orders)
                served = await stub.Deduct(order("o-2", "eu", ("promo", 1)), timeout=5)
                await asyncio.sleep(3 * renew_interval_s + 0.1)
                with pytest.raises(grpc.aio.AioRpcError) as expired:
                    await stub.Deduct(order("o-3", "eu", ("promo", 1)), timeout=5)
                status = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)

    assert not served.replayed
    assert reject_reason(expired.value) == "REJECT_REASON_LEASE_EXPIRED"
    assert status.balances[0].available > 0


async def test_a_redis_that_lost_its_data_costs_quota_but_never_over_issues(tmp_path: Path) -> None:
    with redis_server() as redis:
        async with region_on_redis(tmp_path, redis.address, budget=100, renew_interval="0.1") as region:
            stub = region.stubs[0]
            acked, refusals = 0, set()
            for number in range(5):
                await stub.Deduct(order(f"before-{number}", "eu", ("promo", 1)), timeout=5)
                acked += 1
            before = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)

            flusher = Redis(host=redis.host, port=redis.port)
            await flusher.flushall()
            await flusher.aclose()

            for number in range(200):
                try:
                    await stub.Deduct(order(f"after-{number}", "eu", ("promo", 1)), timeout=5)
                except grpc.aio.AioRpcError as error:
                    refusals.add(error.code())
                    await asyncio.sleep(0.02)
                    continue
                acked += 1
            after = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            usage = await region.usage()

    assert refusals <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert after.incarnation != before.incarnation
    assert usage.regions[0].written_off > 0
    assert acked <= 100
    assert acked > 5


async def test_two_agents_on_one_redis_share_one_allotment_and_sell_out_exactly(tmp_path: Path) -> None:
    with redis_server() as redis:
        async with region_on_redis(tmp_path, redis.address, budget=1_500, agents=2) as region:
            numbers = iter(range(2_000))
            acked = 0

            async def worker(stub: agent_grpc.RegionAgentAsyncStub) -> None:
                nonlocal acked
                for number in numbers:
                    try:
                        await stub.Deduct(order(f"o-{number}", "eu", ("promo", 1)), timeout=5)
                    except grpc.aio.AioRpcError:
                        continue
                    acked += 1

            await asyncio.gather(*(worker(region.stubs[n % 2]) for n in range(16)))
            statuses = [await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5) for stub in region.stubs]

            async def reported() -> bool:
                return (await region.usage()).regions[0].consumed == acked

            await eventually(reported)

    assert acked == 1_500
    assert statuses[0].incarnation == statuses[1].incarnation
    assert statuses[0].balances[0].deducted == statuses[1].balances[0].deducted == 1_500


async def test_an_agent_started_on_another_ledger_is_refused_and_the_redis_agents_serve_on(tmp_path: Path) -> None:
    """The tired operator's slip: --ledger forgotten (so an in-process ledger), or another Redis database. Had
    such an agent joined, its first grant would have written off the region's Redis life: the Redis agents
    would have stopped, and not started again on a Redis that holds a retired life."""
    with redis_server() as redis:
        async with region_on_redis(tmp_path, redis.address, budget=100, center_flags=("--lease-ttl", "1")) as region:
            stub = region.stubs[0]
            await stub.Deduct(order("before", "eu", ("promo", 1)), timeout=5)
            center = region.center.address
            strays = [(), ("--ledger", f"redis://{redis.address}/1")]

            results = [
                run_quota(
                    "agent",
                    "serve",
                    "--region",
                    "eu",
                    "--listen",
                    "127.0.0.1:0",
                    "--center",
                    center,
                    *ledger,
                    cwd=tmp_path,
                )
                for ledger in strays
            ]

            answer = await stub.Deduct(order("after", "eu", ("promo", 1)), timeout=5)
            usage = await region.usage()
            alive = region.agents[0].alive

    for result in results:
        assert result.returncode == 2, result.stderr
        assert "this agent cannot join: region eu is served by another agent" in result.stderr.splitlines()[-1]
    assert not answer.replayed
    assert alive
    assert usage.regions[0].written_off == 0
