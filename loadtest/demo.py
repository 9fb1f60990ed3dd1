"""`quota demo`: a center and three regions, as real processes, sell one budget out.

Demand is skewed 70/20/10 across eu, us and ap and runs to `demand_factor` times the
budget, so the budget must sell out exactly while every deduction is served locally.

Every link is mutual TLS, as production runs it: a development CA and each role's certificate
are written to the demo's temporary directory, and go with it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import AsyncQuotaClient, Line, QuotaClientError
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.tls import DevTls, write_dev_tls

REGIONS = {"eu": 0.7, "us": 0.2, "ap": 0.1}
PROMOTION_ID = "demo-coupon"
OWNER = "owner-alice"
"""The budget owner who creates the demo's promotion."""


@dataclass(frozen=True)
class DemoOptions:
    budget: int = 50_000
    demand_factor: float = 1.2
    concurrency: int = 8
    seed: int = 7


@dataclass
class RegionTally:
    acked: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    center_calls: int = 0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def _reason(error: QuotaClientError) -> str:
    reason = error.reason or (error.code.name if error.code else type(error).__name__)
    return reason.removeprefix("REJECT_REASON_").lower()


async def create_promotion(center_address: str, budget: int, tls: DevTls) -> None:
    now_ms = time.time_ns() // 1_000_000
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(now_ms - 60_000)
    end.FromMilliseconds(now_ms + 3_600_000)
    async with tls.transport(OWNER).aio_channel(center_address) as channel:
        await center_grpc.PromotionAdminStub(channel).CreatePromotion(
            center_pb.CreatePromotionRequest(
                promotion=center_pb.Promotion(
                    id=PROMOTION_ID,
                    kind=center_pb.PROMOTION_KIND_COUNT,
                    budget=budget,
                    start_time=start,
                    end_time=end,
                    regions=list(REGIONS),
                )
            )
        )


def demand_of(options: DemoOptions) -> int:
    """Orders the demo sends: `demand_factor` times the budget."""
    return math.ceil(options.budget * options.demand_factor)


async def drive(
    agents: dict[str, str], options: DemoOptions, tls: DevTls, on_order: Callable[[], None] = lambda: None
) -> dict[str, RegionTally]:
    """The demo's orders, skewed across the regions, from `options.concurrency` order services at once;
    `on_order` hears of each answer."""
    rng = random.Random(options.seed)
    demand = demand_of(options)
    orders = iter(enumerate(rng.choices(list(REGIONS), weights=list(REGIONS.values()), k=demand)))
    tallies = {region: RegionTally() for region in REGIONS}
    # Each region's order service calls its own agent, with its own certificate, through the client library.
    clients = {
        region: AsyncQuotaClient(address, region, tls=tls.client_tls(f"orders-{region}"))
        for region, address in agents.items()
    }

    async def worker() -> None:
        for number, region in orders:
            tally = tallies[region]
            started = time.perf_counter()
            try:
                await clients[region].deduct(f"order-{number}", [Line(PROMOTION_ID, 1, f"user-{number % 9973}")])
                tally.acked += 1
            except QuotaClientError as error:
                tally.rejected[_reason(error)] += 1
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            on_order()

    await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    for region, client in clients.items():
        tallies[region].center_calls = (await client.status()).center_calls
        await client.close()
    return tallies


def _summary(options: DemoOptions, tallies: dict[str, RegionTally], demand: int) -> dict[str, Any]:
    issued = sum(t.acked for t in tallies.values())
    center_calls = sum(t.center_calls for t in tallies.values())
    latencies = [ms for t in tallies.values() for ms in t.latencies_ms]
    return {
        "mutual_tls": True,
        "budget": options.budget,
        "issued": issued,
        "over_issue": max(0, issued - options.budget),
        "stranded": max(0, options.budget - issued),
        "center_calls": center_calls,
        "deductions": demand,
        "center_calls_per_1000": round(center_calls * 1000 / demand, 2),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "regions": {
            region: {
                "acked": t.acked,
                "rejected": sum(t.rejected.values()),
                "rejected_by_reason": dict(t.rejected),
                "p50_ms": round(percentile(t.latencies_ms, 0.5), 3),
                "p99_ms": round(percentile(t.latencies_ms, 0.99), 3),
                "center_calls": t.center_calls,
            }
            for region, t in tallies.items()
        },
    }


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"quota demo: budget {summary['budget']:,} coupons, demand {summary['deductions']:,} orders")
    for column in ("region", "acked", "rejected", "p50 ms", "p99 ms", "center calls"):
        table.add_column(column, justify="left" if column.startswith(("region", "rejected")) else "right")
    for region, row in summary["regions"].items():
        why = ", ".join(f"{n:,} {reason}" for reason, n in row["rejected_by_reason"].items()) or "0"
        table.add_row(
            region, f"{row['acked']:,}", why, f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}", f"{row['center_calls']:,}",
        )  # fmt: skip
    table.add_section()
    table.add_row(
        "total", f"{summary['issued']:,}", "", f"{summary['p50_ms']:.2f}", f"{summary['p99_ms']:.2f}",
        f"{summary['center_calls']:,}",
    )  # fmt: skip
    table.caption = (
        f"issued {summary['issued']:,} of {summary['budget']:,} · over-issue {summary['over_issue']:,} · "
        f"stranded {summary['stranded']:,} · {summary['center_calls_per_1000']} center calls per 1,000 orders · "
        "mutual TLS on every link"
    )
    return table


async def _run(options: DemoOptions, workdir: Path, console: Console) -> dict[str, Any]:
    tls = write_dev_tls(workdir / "certs", list(REGIONS))
    console.print(
        f"mutual TLS on every link: a development CA and a certificate per role in {tls.directory} "
        "(as `quota certs dev` writes them), removed on exit"
    )
    processes: list[ServerProcess] = []
    try:
        center = center_process(workdir, tls=tls).start()
        processes.append(center)
        agents = {}
        for region in REGIONS:
            agent = agent_process(workdir, region, center.address, tls=tls).start()
            processes.append(agent)
            agents[region] = agent.address
        await create_promotion(center.address, options.budget, tls)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("deducting", total=demand_of(options))
            tallies = await drive(agents, options, tls, lambda: progress.advance(task))
        return _summary(options, tallies, demand_of(options))
    finally:
        for process in reversed(processes):
            process.stop()


def run_demo(options: DemoOptions, as_json: bool) -> None:
    console = Console(stderr=as_json)
    with tempfile.TemporaryDirectory(prefix="quota-demo-") as workdir:
        summary = asyncio.run(_run(options, Path(workdir), console))
    if as_json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        console.print(_table(summary))
