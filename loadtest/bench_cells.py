"""`quota bench cells`: one region's deductions per second run as 1, 2 and 4 cells (quota_common.cells), in one
run on this machine.

Each cell is a real agent process on a durable Redis of its own (AOF, fsync on every write), joined to one
center process; each configuration is a region of its own (`cells2` with cells `cells2.1`, `cells2.2`), with
its own promotions allowed in the region. The load generator is this process: `clients` closed-loop order
services calling through `quota_client.AsyncCellsClient`, which routes each order to its user's cell, on the
same seeded demand as `quota bench` (10,000 users, four promotions that never run out, a flash one that does).
Every configuration is up before any is timed, and they take turns in `rounds` stretches, each round in the
other order, so a machine that drifts moves them alike.

What cells buy is cores: each cell's agent and Redis are processes of their own. On a machine with fewer cores
than processes the cells share them, so beside the rates the bench prints the CPU each kind of process used
(cores busy, from /proc) and the deductions per second of agent CPU: the rate a cell reaches when it has a core
to itself, which is what adding cells multiplies. Printed, never asserted.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtest.bench import promotion_pb
from loadtest.compare import quantiles_ms
from loadtest.load import Demand, UnderLoad
from loadtest.targets import POLICY, ThroughClient
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncCellsClient
from quota_testing.launch import agent_process, center_process
from quota_testing.servers import redis_server

WARM_UP_S = 1.0


@dataclass(frozen=True)
class CellsOptions:
    counts: tuple[int, ...] = (1, 2, 4)
    seconds: float = 6.0
    """Timed, per configuration, over all rounds."""
    clients: int = 16
    rounds: int = 3
    seed: int = 7


@dataclass
class _Cells:
    """One configuration: a region of `count` cells, up and under load."""

    count: int
    load: UnderLoad
    agents: list[int]
    redis: list[int]
    cpu_s: dict[str, float] = field(default_factory=lambda: {"agents": 0.0, "redis": 0.0, "load_generator": 0.0})


def _cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user and system) the processes `pids` used so far, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: the 14th and 15th fields
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _cpu_of(cells: _Cells) -> Iterator[None]:
    """Adds the CPU each kind of process used during the block to `cells.cpu_s`."""
    before = (_cpu_s(cells.agents), _cpu_s(cells.redis), time.process_time())
    yield
    after = (_cpu_s(cells.agents), _cpu_s(cells.redis), time.process_time())
    for kind, start, end in zip(("agents", "redis", "load_generator"), before, after, strict=True):
        cells.cpu_s[kind] += end - start


@contextlib.asynccontextmanager
async def _region(workdir: Path, center: str, count: int, options: CellsOptions) -> AsyncIterator[_Cells]:
    """A region of `count` cells, each an agent on its own Redis, and its order services' load."""
    region = f"cells{count}"
    demand = Demand(region, options.seed)
    async with grpc.aio.insecure_channel(center) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)
        for promotion_id, budget in demand.budgets().items():
            request = pb.CreatePromotionRequest(promotion=promotion_pb(promotion_id, budget, [region]))
            await admin.CreatePromotion(request, timeout=10)
    with contextlib.ExitStack() as servers:
        stores = [servers.enter_context(redis_server()) for _ in range(count)]
        agents = []
        for number, store in enumerate(stores, start=1):
            cell = f"{region}.{number}"
            process = agent_process(workdir, cell, center, "--ledger", f"redis://{store.address}/0").start()
            servers.callback(process.stop)
            agents.append((cell, process))
        addresses = {cell: process.address for cell, process in agents}
        async with AsyncCellsClient(addresses, policy=POLICY) as client:
            load = UnderLoad(ThroughClient(client), demand, options.clients)
            yield _Cells(count, load, [process.pid for _, process in agents], [store.pid for store in stores])


async def bench_cells(options: CellsOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quota-bench-cells-") as workdir:
        center = center_process(Path(workdir)).start()
        try:
            async with contextlib.AsyncExitStack() as running:
                regions = [
                    await running.enter_async_context(_region(Path(workdir), center.address, count, options))
                    for count in options.counts
                ]
                for cells in regions:
                    await cells.load.warm_up(WARM_UP_S)
                for number in range(options.rounds):
                    for cells in regions if number % 2 == 0 else regions[::-1]:
                        with _cpu_of(cells):
                            await cells.load.drive(options.seconds / options.rounds)
        finally:
            center.stop()
    return _figures(regions, options)


def _figures(regions: list[_Cells], options: CellsOptions) -> dict[str, Any]:
    rows = []
    for cells in regions:
        measured = cells.load.measured
        p50, p99, _ = quantiles_ms(measured.latencies_s)
        per_s = measured.deductions / measured.elapsed_s
        busy = {kind: round(cpu_s / measured.elapsed_s, 2) for kind, cpu_s in cells.cpu_s.items()}
        rows.append(
            {
                "cells": cells.count,
                "deductions": measured.deductions,
                "per_s": round(per_s),
                "ratio_to_1_cell": 0.0,
                "p50_ms": p50,
                "p99_ms": p99,
                "agent_cores": busy["agents"],
                "redis_cores": busy["redis"],
                "load_generator_cores": busy["load_generator"],
                "per_agent_core_s": round(measured.deductions / max(cells.cpu_s["agents"], 1e-9)),
                "over_issue": cells.load.over_issue(),
                "errors": sum(measured.errors.values()),
            }
        )
    one = rows[0]["per_s"] or 1
    for row in rows:
        row["ratio_to_1_cell"] = round(row["per_s"] / one, 2)
    return {
        "rows": rows,
        "cores": os.cpu_count(),
        "clients": options.clients,
        "seconds": options.seconds,
        "rounds": options.rounds,
    }
