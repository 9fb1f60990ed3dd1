"""The center and two agents as real processes, talking gRPC, as an operator runs them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import RunningServer, etcd_server
from quota_testing.support import eventually, order, promotion
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

FAST = ("--renew-interval", "0.2")
EXHAUSTED = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
# While the center is down, a region whose allotment runs dry answers UNAVAILABLE (retry later).
CENTER_AWAY = EXHAUSTED | {grpc.StatusCode.UNAVAILABLE}


@dataclass
class Cluster:
    workdir: Path
    center: ServerProcess
    agents: dict[str, ServerProcess]
    store: str | None

    def processes(self) -> Iterator[ServerProcess]:
        yield from self.agents.values()
        yield self.center


@pytest.fixture(scope="module")
def etcd() -> Iterator[RunningServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The center on each store, with its state under a fresh key prefix or file."""
    etcd_address = request.getfixturevalue("etcd").address if request.param == "etcd" else None
    store = f"etcd://{etcd_address}/test/{tmp_path.name}" if etcd_address else None
    center = center_process(tmp_path, store=store).start()
    cluster = Cluster(tmp_path, center, {}, store)
    try:
        for region in ("eu", "us"):
            cluster.agents[region] = agent_process(tmp_path, region, center.address, *FAST).start()
        yield cluster
    finally:
        for process in cluster.processes():
            process.kill()


@dataclass
class Clients:
    admin: center_grpc.PromotionAdminAsyncStub
    orders: dict[str, agent_grpc.RegionAgentAsyncStub]


async def leading(address: str) -> None:
    """Waits until the center at `address` answers as the leader (on etcd it campaigns first)."""
    async with grpc.aio.insecure_channel(address) as channel:
        admin = center_grpc.PromotionAdminStub(channel)

        async def answers() -> bool:
            try:
                await admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=1)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False
            return True

        await eventually(answers, timeout_s=15)


@pytest.fixture
async def clients(cluster: Cluster) -> AsyncIterator[Clients]:
    await leading(cluster.center.address)
    channels = [grpc.aio.insecure_channel(cluster.center.address)]
    orders = {}
    for region, agent in cluster.agents.items():
        channels.append(grpc.aio.insecure_channel(agent.address))
        orders[region] = agent_grpc.RegionAgentStub(channels[-1])
    yield Clients(center_grpc.PromotionAdminStub(channels[0]), orders)
    for channel in channels:
        await channel.close()


async def _sell(
    clients: Clients, orders: int, concurrency: int = 16, refusals: frozenset[grpc.StatusCode] = EXHAUSTED
) -> dict[str, int]:
    """Deducts one unit per order, alternating regions; returns acknowledged units per region.
    Any refusal other than `refusals` fails the test."""
    numbers = iter(range(orders))
    acked = dict.fromkeys(clients.orders, 0)
    regions = itertools.cycle(clients.orders)
    unexpected: list[grpc.aio.AioRpcError] = []

    async def worker() -> None:
        for number in numbers:
            region = next(regions)
            try:
                await clients.orders[region].Deduct(order(f"o-{number}", region, ("promo", 1)), timeout=5)
            except grpc.aio.AioRpcError as error:
                if error.code() not in refusals:
                    unexpected.append(error)
                continue
            acked[region] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert unexpected == []
    return acked


async def _balances(clients: Clients) -> dict[str, agent_pb.PromotionBalance]:
    balances = {}
    for region, stub in clients.orders.items():
        status = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
        balances[region] = next((b for b in status.balances if b.promotion_id == "promo"), agent_pb.PromotionBalance())
    return balances


async def _settled_usage(clients: Clients) -> dict[str, center_pb.RegionUsage]:
    """The center's view once the agents' reports have caught up with their ledgers."""
    usage: dict[str, center_pb.RegionUsage] = {}
    for _ in range(50):
        balances = await _balances(clients)
        answer = await clients.admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
        usage = {r.region: r for r in answer.regions}
        if all(
            usage[region].consumed == b.deducted - b.refunded and usage[region].granted == b.granted
            for region, b in balances.items()
        ):
            return usage
        await asyncio.sleep(0.1)
    raise AssertionError(f"reports never caught up: center {usage}, agents {await _balances(clients)}")


async def test_two_regions_sell_the_budget_out_exactly(clients: Clients) -> None:
    await clients.admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_500)))

    acked = await _sell(clients, orders=2_000)

    assert sum(acked.values()) == 1_500
    assert all(units > 0 for units in acked.values())
    usage = await _settled_usage(clients)
    assert sum(r.consumed for r in usage.values()) == 1_500


async def test_a_retried_deduction_returns_the_first_answer_and_deducts_once(clients: Clients) -> None:
    await clients.admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=100)))
    eu = clients.orders["eu"]

    first = await eu.Deduct(order("retry-1", "eu", ("promo", 5)), timeout=5)
    again = await eu.Deduct(order("retry-1", "eu", ("promo", 5)), timeout=5)

    assert not first.replayed
    assert again.replayed
    assert list(again.lines) == list(first.lines)
    assert (await _balances(clients))["eu"].deducted == 5


async def test_refunded_quota_can_be_spent_again(clients: Clients) -> None:
    await clients.admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=10)))
    eu = clients.orders["eu"]
    for number in range(10):
        await eu.Deduct(order(f"o-{number}", "eu", ("promo", 1)), timeout=5)

    refund = await eu.Refund(agent_pb.RefundRequest(order_key="o-0"), timeout=5)
    assert [(line.promotion_id, line.amount) for line in refund.lines] == [("promo", 1)]
    await eu.Deduct(order("after-refund", "eu", ("promo", 1)), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await eu.Deduct(order("one-too-many", "eu", ("promo", 1)), timeout=5)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    balance = (await _balances(clients))["eu"]
    assert (balance.deducted, balance.refunded) == (11, 1)


async def test_center_killed_and_restarted_mid_run_loses_no_grant_and_no_deduction(
    cluster: Cluster, clients: Clients
) -> None:
    await clients.admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=3_000)))
    selling = asyncio.create_task(_sell(clients, orders=4_000, concurrency=8, refusals=CENTER_AWAY))
    await asyncio.sleep(0.5)

    cluster.center.kill()
    await asyncio.sleep(0.5)
    restarted = center_process(cluster.workdir, port=cluster.center.port, store=cluster.store)
    cluster.center = restarted.start()
    await leading(cluster.center.address)
    acked = await selling

    usage = await _settled_usage(clients)
    balances = await _balances(clients)
    assert sum(acked.values()) <= 3_000
    for region, units in acked.items():
        assert balances[region].deducted == units
        assert usage[region].consumed == units
        assert usage[region].granted == balances[region].granted
    answer = await clients.admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
    assert answer.unallocated == 3_000 - sum(r.granted - r.returned for r in usage.values())
