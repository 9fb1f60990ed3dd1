"""`quota bench freeze`: how long a freeze takes to stop every region, with the push link and without.

A center and three agents run as real processes on loopback. Every agent serves orders on the
same promotions; the benchmark freezes them one at a time and measures, per freeze, the time from
the SetFrozen answer until the last agent refuses a deduction of that promotion as FROZEN. Each
agent is probed by one loop that deducts one unit of every promotion still waiting for the news,
round after round, so the resolution is one round trip. Each accepted probe is refunded at once:
a probe that drained the allotment would make the agent ask the center for more, and the refused
refill would tell it of the freeze by a third way, not the link being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from loadtest.bench import promotion_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient, Frozen, Line, RetryPolicy
from quota_testing.launch import ServerProcess, agent_process, center_process, kill_all

REGIONS = ("eu", "us", "ap")
LINKS = {"push": (), "pull_only": ("--no-push",)}
WARM_UP = 1_000
ONE_TRY = RetryPolicy(deadline_s=5, attempt_timeout_s=5, max_attempts=1)
"""A probe is one call: a retry would blur when the refusal came."""
GAP_S = {"push": 0.05, "pull_only": 0.2}
"""Between two freezes: short beside what each link takes, so freezes rarely overlap."""


class _Prober:
    """Deducts from one agent every promotion it has not yet refused, until it refuses each."""

    def __init__(self, quota: AsyncQuotaClient) -> None:
        self._quota = quota
        self._waiting: set[str] = set()
        self.refused_at: dict[str, float] = {}
        self._orders = 0

    def expect(self, promotion_id: str) -> None:
        self._waiting.add(promotion_id)

    async def _refused(self, promotion_id: str, amount: int = 1) -> bool:
        self._orders += 1
        key = f"{self._quota.region}-{self._orders}"
        try:
            await self._quota.deduct(key, [Line(promotion_id, amount, f"user-{self._orders}")])
        except Frozen:
            return True
        await self._quota.refund(key)
        return False

    async def warm_up(self, promotion_ids: list[str]) -> None:
        """Caches every promotion and holds a large allotment of it, so probes never need a refill."""
        await asyncio.gather(*(self._refused(promotion_id, amount=WARM_UP) for promotion_id in promotion_ids))

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set() or self._waiting:
            round_ = sorted(self._waiting)
            if not round_:
                await asyncio.sleep(0.001)
                continue
            outcomes = await asyncio.gather(*(self._refused(promotion_id) for promotion_id in round_))
            now = time.perf_counter()
            for promotion_id, refused in zip(round_, outcomes, strict=True):
                if refused:
                    self._waiting.discard(promotion_id)
                    self.refused_at[promotion_id] = now


async def _measure(link: str, freezes: int, workdir: Path) -> dict[str, Any]:
    processes: list[ServerProcess] = []
    async with contextlib.AsyncExitStack() as opened:
        opened.callback(kill_all, processes)  # last, after the links to them closed
        center = center_process(workdir / link).start()
        processes.append(center)
        for region in REGIONS:
            processes.append(agent_process(workdir / link, region, center.address, *LINKS[link]).start())
        admin = pb_grpc.PromotionAdminStub(await opened.enter_async_context(grpc.aio.insecure_channel(center.address)))
        ids = [f"{link}-{n}" for n in range(freezes)]
        for promotion_id in ids:
            created = promotion_pb(promotion_id, 10**9, list(REGIONS))
            await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=created), timeout=10)
        probers = [
            _Prober(await opened.enter_async_context(AsyncQuotaClient(agent.address, region, policy=ONE_TRY)))
            for agent, region in zip(processes[1:], REGIONS, strict=True)
        ]
        for prober in probers:
            await prober.warm_up(ids)
        done = asyncio.Event()
        probing = [asyncio.create_task(prober.run(done)) for prober in probers]
        frozen_at: dict[str, float] = {}
        for promotion_id in ids:
            await admin.SetFrozen(pb.SetFrozenRequest(promotion_id=promotion_id, frozen=True), timeout=10)
            frozen_at[promotion_id] = time.perf_counter()
            for prober in probers:
                prober.expect(promotion_id)
            await asyncio.sleep(GAP_S[link])
        done.set()
        await asyncio.wait_for(asyncio.gather(*probing), timeout=60)
    delays = [max(p.refused_at[i] for p in probers) - frozen_at[i] for i in ids]
    cuts = statistics.quantiles(delays, n=100, method="inclusive")
    return {"n": len(delays), "p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1)}


async def bench_freeze(freezes: int = 50) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quota-bench-freeze-") as workdir:
        figures = {}
        for link in LINKS:
            (Path(workdir) / link).mkdir()
            figures[link] = await _measure(link, freezes, Path(workdir))
        return figures
