"""`quota bench store` and `quota bench failover`: figures measured in one run, never timed tests.

Each starts what it needs (etcd, centers, agents) on free loopback ports and stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient, Line, QuotaClientError
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import etcd_server

HOUR_MS = 3_600_000


def promotion_pb(promotion_id: str, budget: int, regions: list[str]) -> pb.Promotion:
    now_ms = time.time_ns() // 1_000_000
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(now_ms - HOUR_MS)
    end.FromMilliseconds(now_ms + HOUR_MS)
    return pb.Promotion(
        id=promotion_id, kind=pb.PROMOTION_KIND_COUNT, budget=budget, start_time=start, end_time=end, regions=regions
    )


async def answers_as_leader(address: str) -> bool:
    """True when the replica at `address` accepts a write (creating a throwaway promotion)."""
    async with grpc.aio.insecure_channel(address) as channel:
        probe = promotion_pb(f"probe-{uuid.uuid4().hex}", 1, ["probe"])
        try:
            await pb_grpc.PromotionAdminStub(channel).CreatePromotion(
                pb.CreatePromotionRequest(promotion=probe), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
        return True


async def await_leader(addresses: list[str], timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for address in addresses:
            if await answers_as_leader(address):
                return address
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no center replica of {addresses} became leader within {timeout_s} s")


# Store throughput


async def _grants_per_s(address: str, seconds: float) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        await await_leader([address])
        admin, allocation = pb_grpc.PromotionAdminStub(channel), pb_grpc.AllocationStub(channel)
        await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion_pb("bench", 2**50, ["eu"])))
        joined = await allocation.Join(pb.JoinRequest(region="eu"), timeout=5)
        agent = pb.AgentIdentity(region="eu", incarnation=joined.incarnation)
        grants, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            request = pb.AcquireRequest(agent=agent, promotion_id="bench", amount=1, request_id=uuid.uuid4().hex)
            await allocation.Acquire(request, timeout=5)
            grants += 1
        return grants / (time.perf_counter() - started)


async def bench_store(seconds: float) -> dict[str, Any]:
    """Sequential grants per second through the center's gRPC API, on each store."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="quota-bench-") as workdir, etcd_server() as etcd:
        for name, store in (("sqlite", None), ("etcd", f"etcd://{etcd.address}/bench")):
            center = center_process(Path(workdir), store=store).start()
            try:
                figures[f"{name}_grants_per_s"] = round(await _grants_per_s(center.address, seconds), 1)
            finally:
                center.stop()
    return figures


# Failover


@dataclass
class OrderTally:
    acked: dict[str, int]
    failed: int = 0


async def sell_until(worker: int, stop: asyncio.Event, clients: dict[str, AsyncQuotaClient], tally: OrderTally) -> None:
    """One order service: one-unit orders of promotion "promo", round-robin over the regions' clients, until `stop`.
    A failed order is one the client gave up on (retries included) or the agent refused."""
    number = 0
    while not stop.is_set():
        for region, client in clients.items():
            number += 1
            try:
                await client.deduct(f"w{worker}-o{number}", [Line("promo", 1, f"user-{number % 997}")], deadline_s=3)
            except QuotaClientError:
                tally.failed += 1
                continue
            tally.acked[region] += 1


async def deducted_by_region(clients: dict[str, AsyncQuotaClient]) -> dict[str, int]:
    deducted = {}
    for region, client in clients.items():
        status = await client.status(deadline_s=2)
        deducted[region] = next((b.deducted for b in status.balances if b.promotion_id == "promo"), 0)
    return deducted


async def _settled_usage(center: str, deducted: int, timeout_s: float = 10.0) -> pb.Usage:
    """The center's usage once the agents' reports account for `deducted` (or the timeout)."""
    async with grpc.aio.insecure_channel(center) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)
        deadline = time.monotonic() + timeout_s
        while True:
            usage = await admin.GetUsage(pb.GetUsageRequest(promotion_id="promo"), timeout=5)
            if sum(r.consumed for r in usage.regions) == deducted or time.monotonic() > deadline:
                return usage
            await asyncio.sleep(0.1)


async def bench_failover(budget: int = 1_000_000, election_ttl_s: int = 2, workers: int = 4) -> dict[str, Any]:
    """Two centers on etcd and two agents under load; SIGKILL the leader; measure."""
    processes: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="quota-bench-") as workdir, etcd_server() as etcd:
        try:
            centers = []
            for n in range(2):
                (Path(workdir) / f"c{n}").mkdir()
                store = f"etcd://{etcd.address}/failover"
                centers.append(
                    center_process(Path(workdir) / f"c{n}", "--election-ttl", str(election_ttl_s), store=store).start()
                )
            processes.extend(centers)
            addresses = [center.address for center in centers]
            agents = {r: agent_process(Path(workdir), r, ",".join(addresses)).start() for r in ("eu", "us")}
            processes.extend(agents.values())
            leader_address = await await_leader(addresses)
            leader = next(center for center in centers if center.address == leader_address)
            async with grpc.aio.insecure_channel(leader_address) as channel:
                await pb_grpc.PromotionAdminStub(channel).CreatePromotion(
                    pb.CreatePromotionRequest(promotion=promotion_pb("promo", budget, list(agents)))
                )
            clients = {region: AsyncQuotaClient(agent.address, region) for region, agent in agents.items()}
            stop, tally = asyncio.Event(), OrderTally(dict.fromkeys(clients, 0))
            selling = [asyncio.create_task(sell_until(w, stop, clients, tally)) for w in range(workers)]
            await asyncio.sleep(2.0)

            os.kill(leader.pid, signal.SIGKILL)
            killed = time.monotonic()
            new_leader = await await_leader([a for a in addresses if a != leader_address])
            failover_s = time.monotonic() - killed
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*selling)
            deducted = await deducted_by_region(clients)
            usage = await _settled_usage(new_leader, sum(deducted.values()))
            for client in clients.values():
                await client.close()
        finally:
            for process in processes:
                process.kill()
    consumed = sum(region.consumed for region in usage.regions)
    return {
        "failover_s": round(failover_s, 3),
        "deductions_acked": sum(tally.acked.values()),
        "deductions_failed": tally.failed,
        "over_issue": max(0, sum(deducted.values()) - budget),
        "lost_acks": sum(max(0, acked - deducted[region]) for region, acked in tally.acked.items()),
        "center_consumed": consumed,
        "agents_deducted": sum(deducted.values()),
    }
