"""`quota bench ledger`: deductions per second through one agent on each regional ledger, beside
the bare Redis script the Redis ledger runs per deduction, measured in one run on this machine.

The load generator shares the machine's cores with the agent, the center and Redis, so the
figures to compare are the ratios between rows, not the absolute numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis

from loadtest.bench import promotion_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient, RetryPolicy
from quota_client import Line as OrderLine
from quota_testing.launch import ServerProcess, agent_process, center_process, kill_all
from quota_testing.servers import redis_server
from region_agent.ledger.base import Line
from region_agent.ledger.redis import RedisLedger

BUDGET = 2**50
PIPELINE_BATCH = 100
ONE_TRY = RetryPolicy(deadline_s=10, attempt_timeout_s=10, max_attempts=1)
"""Each order one call, as an order service's first attempt: what the agent serves, not what retries hide."""


async def _through_agent(address: str, seconds: float, clients: int) -> dict[str, Any]:
    """`clients` concurrent order services deducting one unit per order for `seconds`."""
    latencies: list[float] = []
    async with AsyncQuotaClient(address, "eu", policy=ONE_TRY) as quota:
        await quota.deduct("warm-up", [OrderLine("bench", 1, "warm-up")])
        started = time.perf_counter()

        async def client(number: int) -> None:
            order = 0
            while time.perf_counter() - started < seconds:
                order += 1
                line = OrderLine("bench", 1, f"user-{order % 1000}")
                sent = time.perf_counter()
                await quota.deduct(f"c{number}-{order}", [line])
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "deductions_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


@contextlib.asynccontextmanager
async def _funded_ledger(address: str) -> AsyncIterator[RedisLedger]:
    """A ledger of its own on the benchmark's Redis, holding more than any run can spend."""
    host, port = address.split(":")
    client = redis.Redis(host=host, port=int(port))
    ledger = RedisLedger(client, f"bench-{uuid.uuid4().hex}")
    try:
        await ledger.apply_grant("g", "bench", BUDGET, await ledger.incarnation())
        yield ledger
    finally:
        await ledger.aclose()
        await client.aclose()


async def _one_at_a_time_per_s(ledger: RedisLedger, seconds: float) -> float:
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        calls += 1
        await ledger.deduct(f"s-{calls}", (Line("bench", 1, f"user-{calls % 1000}"),))
    return calls / (time.perf_counter() - started)


async def script_loop_per_s(address: str, seconds: float) -> float:
    """The agent's deduction script, one call after another from one client, nothing else."""
    async with _funded_ledger(address) as ledger:
        return await _one_at_a_time_per_s(ledger, seconds)


async def _bare_script(address: str, seconds: float) -> dict[str, float]:
    """The deduction script straight from one client: one EVALSHA per round trip, then pipelined."""
    async with _funded_ledger(address) as ledger:
        sequential_per_s = await _one_at_a_time_per_s(ledger, seconds)
        started, pipelined = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            batch = [
                ledger.deduct(f"p-{pipelined + n}", (Line("bench", 1, f"user-{n}"),)) for n in range(PIPELINE_BATCH)
            ]
            await asyncio.gather(*batch)
            pipelined += PIPELINE_BATCH
        concurrent_per_s = pipelined / (time.perf_counter() - started)
    return {"evalsha_sequential_per_s": round(sequential_per_s), "evalsha_concurrent_per_s": round(concurrent_per_s)}


async def bench_ledger(seconds: float, clients: int = 16) -> dict[str, Any]:
    processes: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="quota-bench-") as workdir, redis_server() as store:
        try:
            center = center_process(Path(workdir)).start()
            processes.append(center)
            async with grpc.aio.insecure_channel(center.address) as channel:
                admin = pb_grpc.PromotionAdminStub(channel)
                await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion_pb("bench", BUDGET, ["eu"])))
            figures: dict[str, Any] = {}
            for name, ledger in (("agent_memory", "memory"), ("agent_redis", f"redis://{store.address}/0")):
                agent = agent_process(Path(workdir), "eu", center.address, "--ledger", ledger).start()
                processes.append(agent)
                figures[name] = await _through_agent(agent.address, seconds, clients)
                agent.stop()
            figures.update(await _bare_script(store.address, seconds))
        finally:
            kill_all(processes)
    figures["redis_vs_memory_ratio"] = round(
        figures["agent_redis"]["deductions_per_s"] / figures["agent_memory"]["deductions_per_s"], 2
    )
    figures["agent_redis_vs_evalsha_ratio"] = round(
        figures["agent_redis"]["deductions_per_s"] / figures["evalsha_sequential_per_s"], 2
    )
    return figures
