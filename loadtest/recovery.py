"""`quota bench recovery`: how soon a region serves again once the center is back from an outage.

A center (SQLite, in a temporary directory) and one agent run as real processes on loopback, under
a light order load. For each outage length the center is killed (SIGKILL), kept away that long,
and restarted on the same port and store; the figure is the time from its ready line to the first
order the agent accepts after it. The agent may serve through a short outage from its allotment
and lease; what is measured is how long the region is still dark once the center could serve it.
The target is one renew interval plus a second, whatever the outage's length.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from loadtest.bench import promotion_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient, Line, QuotaClientError, RetryPolicy
from quota_testing.launch import ServerProcess, agent_process, center_process
from region_agent.agent import AgentSettings

REGION = "eu"
PROMOTION = "recovery"
ORDER_SERVICES = 4
ORDER_GAP_S = 0.05
"""Between one order service's orders: a light load, with four services a resolution of ~12 ms."""
ONE_TRY = RetryPolicy(deadline_s=5, attempt_timeout_s=5, max_attempts=1)
"""An order refused while the center is away counts as refused: a retry would hide when serving resumed."""
RECOVERY_LIMIT_S = 60.0
"""How long to wait for the first accepted order after the center is back before calling it failed."""


@dataclass(frozen=True)
class RecoveryOptions:
    outages_s: tuple[float, ...] = (5.0, 30.0, 120.0)
    renew_interval_s: float = 3.0

    @property
    def lease_ttl_s(self) -> float:
        # The lease the agents assume from their renew interval; the center's flag takes no less than 0.5 s.
        return max(0.5, AgentSettings(REGION, renew_interval_s=self.renew_interval_s).assumed_lease_ttl_s)

    @property
    def target_s(self) -> float:
        return self.renew_interval_s + 1.0


class _OrderLoad:
    """Order services deducting one unit at a time; remembers when each order was accepted."""

    def __init__(self, quota: AsyncQuotaClient) -> None:
        self._quota = quota
        self._keys = itertools.count()
        self.accepted_at: list[float] = []
        self.refused = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._service() for _ in range(ORDER_SERVICES)))

    async def _service(self) -> None:
        while True:
            try:
                await self._quota.deduct(f"order-{next(self._keys)}", [Line(PROMOTION, 1, "bench")])
            except QuotaClientError:
                self.refused += 1
            else:
                self.accepted_at.append(time.monotonic())
            await asyncio.sleep(ORDER_GAP_S)

    async def first_accepted_after(self, instant: float) -> float | None:
        """When the first order accepted after `instant` was; None if none within RECOVERY_LIMIT_S."""
        while time.monotonic() < instant + RECOVERY_LIMIT_S:
            # Appended as answers arrive, so in time order.
            first = bisect.bisect_right(self.accepted_at, instant)
            if first < len(self.accepted_at):
                return self.accepted_at[first]
            await asyncio.sleep(0.01)
        return None


def _center(workdir: Path, options: RecoveryOptions, port: int = 0) -> ServerProcess:
    return center_process(workdir, "--lease-ttl", str(options.lease_ttl_s), port=port)


async def _outage(
    center: ServerProcess, load: _OrderLoad, outage_s: float, options: RecoveryOptions
) -> tuple[dict[str, Any], ServerProcess]:
    """Kills the center, restarts it on its port and store after `outage_s`; the row, and the new center."""
    refused_before = load.refused
    center.kill()
    await asyncio.sleep(outage_s)
    restarted = await asyncio.to_thread(_center(center.log_path.parent, options, center.port).start)
    ready_at = time.monotonic()
    served_at = await load.first_accepted_after(ready_at)
    back_s = None if served_at is None else round(served_at - ready_at, 3)
    row = {
        "outage_s": outage_s,
        "back_to_serving_s": back_s,
        "renew_interval_s": options.renew_interval_s,
        "within_target": back_s is not None and back_s <= options.target_s,
        "orders_refused": load.refused - refused_before,
    }
    return row, restarted


async def _measure(workdir: Path, options: RecoveryOptions) -> list[dict[str, Any]]:
    processes = [await asyncio.to_thread(_center(workdir, options).start)]
    try:
        center = processes[0]
        async with grpc.aio.insecure_channel(center.address) as channel:
            promotion = promotion_pb(PROMOTION, 10**12, [REGION])
            await pb_grpc.PromotionAdminStub(channel).CreatePromotion(
                pb.CreatePromotionRequest(promotion=promotion), timeout=10
            )
        renew = ("--renew-interval", str(options.renew_interval_s), "--no-push", "--opening-lookahead", "0")
        agent = agent_process(workdir, REGION, center.address, *renew)
        processes.append(await asyncio.to_thread(agent.start))
        async with AsyncQuotaClient(agent.address, REGION, policy=ONE_TRY) as quota:
            load = _OrderLoad(quota)
            orders = asyncio.create_task(load.run())
            try:
                rows = []
                for outage_s in options.outages_s:
                    # Serving steadily, leases renewed, before each outage.
                    if await load.first_accepted_after(time.monotonic()) is None:
                        raise RuntimeError(f"the agent serves no orders; see {workdir}")
                    await asyncio.sleep(2 * options.renew_interval_s)
                    row, processes[0] = await _outage(processes[0], load, outage_s, options)
                    rows.append(row)
                return rows
            finally:
                orders.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await orders
    finally:
        for process in reversed(processes):
            process.kill()


async def bench_recovery(options: RecoveryOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quota-recovery-") as tmp:
        rows = await _measure(Path(tmp), options)
    return {"target_s": options.target_s, "outages": rows}
