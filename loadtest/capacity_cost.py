"""Where a center group's CPU goes per active pair: the center's own code in this process, no etcd, no gRPC.

    python -m loadtest.capacity_cost [--promotions 1000] [--regions 10]

`quota bench capacity` measures whole processes on a machine others share; this measures the center's work
per unit with `time.process_time`, which that sharing does not inflate: an opening allotment (granted in calls
of MAX_OPENINGS, as agents ask), a region-lease renewal that reports nothing (per region), a report that says
nothing new, one that moved a counter (a copy of the promotion's state and a commit, to the in-memory store
here; on etcd a transaction more, the writes of one call side by side), and the periodic sweeps over every
pair (alert rules, usage history).
The promotions are opened in every region first, as the benchmark opens them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from quota_center.center import Center
from quota_center.center_agents import Opening
from quota_common.clock import SystemClock
from quota_common.model import Kind, Promotion, Report
from quota_common.validation import MAX_OPENINGS
from quota_testing.memory_store import MemoryStore

OPENING = 100


async def _cpu_us(work: Callable[[], Awaitable[object]], units: int) -> float:
    started = time.process_time()
    await work()
    return round((time.process_time() - started) / units * 1e6, 1)


async def center_costs(promotions: int, regions: int) -> dict[str, Any]:
    center = Center(MemoryStore(), SystemClock())
    await center.start()
    names = [f"r{n:02d}" for n in range(regions)]
    ids = [f"cost-{n:06d}" for n in range(promotions)]
    start_ms = time.time_ns() // 1_000_000 + 600_000
    for promotion_id in ids:
        promotion = Promotion(promotion_id, Kind.COUNT, "", 10_000, start_ms, start_ms + 7_200_000, tuple(names))
        await center.create_promotion(promotion)
    lives = {region: center.join(region) for region in names}
    pairs = promotions * regions

    async def open_all() -> None:
        for region, life in lives.items():
            openings = [Opening(pid, OPENING, uuid.uuid4().hex) for pid in ids]
            for first in range(0, len(openings), MAX_OPENINGS):
                await center.acquire_openings(region, life, openings[first : first + MAX_OPENINGS])

    opening_us = await _cpu_us(open_all, pairs)

    def renew_all(deducted: int) -> Callable[[], Awaitable[object]]:
        report = Report(OPENING, 0, deducted, 0, 0, 0, OPENING - deducted, 0)

        async def renew() -> None:
            for region, life in lives.items():
                await center.renew(region, life, dict.fromkeys(ids, report))

        return renew

    revision = max(promotion.revision for promotion in center.promotions())  # the agents' caches are current

    async def renew_leases() -> None:
        for region, life in lives.items():
            await center.renew_region(region, life, {}, revision, full=False)

    await renew_all(0)()  # the first report of each pair is news: the center learns its counters
    await center.alerts.evaluate()  # the first sweeps start each promotion's watch and history: not the steady cost
    await center.sample_history()
    return {
        "promotions": promotions,
        "regions": regions,
        "opening_us": opening_us,
        "region_lease_renewal_us": await _cpu_us(renew_leases, regions),
        "idle_report_us": await _cpu_us(renew_all(0), pairs),
        "changed_report_us": await _cpu_us(renew_all(1), pairs),
        "alert_sweep_us_per_pair": await _cpu_us(center.alerts.evaluate, pairs),
        "history_sweep_us_per_pair": await _cpu_us(center.sample_history, pairs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.capacity_cost", description=__doc__)
    parser.add_argument("--promotions", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(center_costs(args.promotions, args.regions))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
