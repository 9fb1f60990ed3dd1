"""Two center replicas on etcd, two agents, orders flowing: the leader dies, the standby leads."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.bench import OrderTally, deducted_by_region, sell_until
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import AsyncQuotaClient
from quota_common.errors import LEADER_METADATA_KEY, trailing
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import RunningServer, etcd_server
from quota_testing.support import eventually, promotion

pytestmark = pytest.mark.e2e

ELECTION_TTL_S = 2


@dataclass
class Replicas:
    centers: list[ServerProcess]
    agents: dict[str, ServerProcess]


@pytest.fixture
def etcd() -> Iterator[RunningServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture
def replicas(tmp_path: Path, etcd: RunningServer) -> Iterator[Replicas]:
    store = f"etcd://{etcd.address}/quota"
    started = Replicas([], {})
    try:
        for n in range(2):
            workdir = tmp_path / f"center-{n}"
            workdir.mkdir()
            started.centers.append(center_process(workdir, "--election-ttl", str(ELECTION_TTL_S), store=store).start())
        addresses = ",".join(center.address for center in started.centers)
        for region in ("eu", "us"):
            started.agents[region] = agent_process(tmp_path, region, addresses, "--renew-interval", "0.2").start()
        yield started
    finally:
        for process in [*started.agents.values(), *started.centers]:
            process.kill()


async def _role(address: str) -> str:
    """ "leader", or "standby" (naming the leader), or "down"."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await center_grpc.PromotionAdminStub(channel).ListPromotions(center_pb.ListPromotionsRequest(), timeout=1)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "down"
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            named = trailing(error, LEADER_METADATA_KEY)
            return f"standby of {named}" if named else "down"
        return "leader"


async def _leader(replicas: Replicas) -> ServerProcess:
    found: list[ServerProcess] = []

    async def one_leads() -> bool:
        roles = {center.address: await _role(center.address) for center in replicas.centers if center.alive}
        found[:] = [c for c in replicas.centers if roles.get(c.address) == "leader"]
        return len(found) == 1

    await eventually(one_leads, timeout_s=20)
    return found[0]


@pytest.fixture
async def order_clients(replicas: Replicas) -> AsyncIterator[dict[str, AsyncQuotaClient]]:
    clients = {region: AsyncQuotaClient(agent.address, region) for region, agent in replicas.agents.items()}
    yield clients
    for client in clients.values():
        await client.close()


async def test_the_standby_takes_over_and_nothing_is_lost_or_over_issued(
    replicas: Replicas, order_clients: dict[str, AsyncQuotaClient]
) -> None:
    leader = await _leader(replicas)
    standby = next(c for c in replicas.centers if c is not leader)
    assert await _role(standby.address) == f"standby of {leader.address}"
    async with grpc.aio.insecure_channel(leader.address) as channel:
        admin = center_grpc.PromotionAdminStub(channel)
        await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=100_000)))
    stop, tally = asyncio.Event(), OrderTally(dict.fromkeys(order_clients, 0))
    selling = [asyncio.create_task(sell_until(worker, stop, order_clients, tally)) for worker in range(4)]
    await asyncio.sleep(1.0)
    acked_before = sum(tally.acked.values())

    os.kill(leader.pid, signal.SIGKILL)
    new_leader = await _leader(replicas)
    acked_during = sum(tally.acked.values()) - acked_before
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*selling)

    assert new_leader is standby
    assert acked_during > 0, "orders were served from the allotments while no center led"
    async with grpc.aio.insecure_channel(new_leader.address) as channel:
        admin = center_grpc.PromotionAdminStub(channel)

        async def reports_caught_up() -> bool:
            usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=2)
            consumed = {r.region: r.consumed for r in usage.regions}
            return consumed == await deducted_by_region(order_clients)

        await eventually(reports_caught_up)
        usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=2)
    deducted = await deducted_by_region(order_clients)
    # An order whose answer timed out at the client may still have been deducted; never the reverse.
    assert all(deducted[region] >= acked for region, acked in tally.acked.items()), (deducted, tally)
    assert sum(deducted.values()) - sum(tally.acked.values()) <= tally.failed
    assert sum(r.consumed for r in usage.regions) <= 100_000


async def test_a_leader_paused_past_its_lease_commits_nothing_after_it_resumes(replicas: Replicas) -> None:
    leader = await _leader(replicas)
    async with grpc.aio.insecure_channel(leader.address) as channel:
        old_admin = center_grpc.PromotionAdminStub(channel)
        await old_admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))

        os.kill(leader.pid, signal.SIGSTOP)
        try:
            new_leader = await _leader(replicas)
            late_write = asyncio.ensure_future(
                old_admin.SetBudget(
                    center_pb.SetBudgetRequest(promotion_id="promo", budget=5_000, expected_revision=1), timeout=15
                )
            )
            await asyncio.sleep(0.3)
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late_write

    assert new_leader is not leader
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(new_leader.address) as channel:
        stored = await center_grpc.PromotionAdminStub(channel).GetPromotion(
            center_pb.GetPromotionRequest(promotion_id="promo"), timeout=2
        )
    assert (stored.budget, stored.revision) == (1_000, 1)

    async def steps_down() -> bool:
        return await _role(leader.address) == f"standby of {new_leader.address}"

    await eventually(steps_down)


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    status: int = answer.status
    return status


async def test_health_tells_the_leader_from_the_standby_and_follows_a_takeover(replicas: Replicas) -> None:
    serving: int = health_pb2.HealthCheckResponse.SERVING
    not_serving: int = health_pb2.HealthCheckResponse.NOT_SERVING
    allocation = "quota_center.v1.Allocation"
    leader = await _leader(replicas)
    standby = next(c for c in replicas.centers if c is not leader)

    assert [await _health(leader.address), await _health(standby.address)] == [serving, serving]
    assert [await _health(leader.address, allocation), await _health(standby.address, allocation)] == [
        serving,
        not_serving,
    ]

    leader.stop()  # SIGTERM: the leader resigns, the standby wins the next election

    async def standby_leads() -> bool:
        return await _health(standby.address, allocation) == serving

    await eventually(standby_leads)
