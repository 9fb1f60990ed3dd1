"""`quota bench capacity`: how many active (region, promotion) pairs one center group serves, and (`--groups`)
several center groups on one etcd (`loadtest.capacity_groups`).

For each size, on free loopback ports: a fresh single-member etcd, one center on it (a real process,
`center serve --store etcd://...`), and the load generator `loadtest.capacity_regions` (a real process
hosting every region's agent, each speaking the center's API through the agent's own code). The
promotions are created through the admin API (`CREATORS` at a time; the center takes creates one after
another), all starting together at one instant a little later, in every region. The agents take their
opening allotments before the start, which makes every (region, promotion) pair active: the region holds
an allotment of it and renews its lease. From the start a share of the promotions sells (one-unit orders,
open loop); the first `OPENING_WINDOW_S` are counted on their own (center calls per region and second),
then the measured window runs `seconds`.

Figures per size: renew latency p50/p99 (each Renew call, at the agent; and the bucket bounds of the center's
own p50/p99 from its /metrics, which leave out the load generator's lag), the center process's CPU seconds
per second (/proc/<pid>/stat), etcd's transactions and committed proposals per second (its /metrics),
the serialized size of a Renew request, center calls per 1,000 deductions, openings per second (every
opening allotment of the size over the time from the agents' start until the last was in place). One
group "stops" at the first size whose renew p99 exceeds `LIMIT_P99_MS` or whose center needs more than
one core.

With N groups (`groups`), the N centers share the etcd: the shard map lays the slots out evenly over them
before any promotion is created, each promotion is created at its group, and the generator's agents talk to
every group (`CenterGroups`). The center figures are then sums (CPU) and merges (the renew buckets) over the
groups, and each row carries the groups' own (`capacity_groups.group_figures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from loadtest.bench import await_leader
from loadtest.capacity_groups import (
    BASE,
    center_argument,
    group_capacity,
    group_figures,
    lay_out,
    promoted,
    start_center,
)
from loadtest.capacity_regions import OPENING_WINDOW_S, now_ms, promotion_id
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_testing.launch import ServerProcess
from quota_testing.servers import RunningServer, etcd_server

DEFAULT_SIZES = (1_000, 10_000)
"""Promotions per region in the default run (10,000 and 100,000 pairs over ten regions)."""
LARGE_SIZE = 100_000
"""Added by --large: a million pairs, which takes far longer to set up than to measure."""
LIMIT_P99_MS = 500.0
LIMIT_CORES = 1.0
BUDGET = 10_000
"""Of each promotion: large enough that nothing runs out while measured."""
CREATORS = 16
PROBES = 200
"""Throwaway creates (for a region nobody serves) that time the center's creates before the real ones."""
OPENINGS_PER_S_GUESS = 1_000
"""How fast the agents are assumed to take their opening allotments, to place the start; a start placed too
early shows as openings not all in place at the start. About half what the center managed at 100,000 pairs
on this machine under load (1,866 a second; 4,348 at 10,000 pairs)."""
SETUP_MARGIN_S = 15.0
EVENT_BYTES = 64 * 2**20
"""The longest line the generator prints (every Renew call's latency and size at the largest size)."""
ETCD_FLAGS = ("--quota-backend-bytes", str(8 * 2**30), "--auto-compaction-mode", "revision",
              "--auto-compaction-retention", "100000")  # fmt: skip
"""Room for the largest size's writes (every opening rewrites its promotion's document)."""


@dataclass(frozen=True)
class CapacityOptions:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    regions: int = 10
    seconds: float = 30.0
    orders_per_s: float = 1_000.0
    selling: float = 0.1
    groups: tuple[int, ...] = (1,)
    """Center groups, one measurement of every size at each count."""


def _timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _promotion(identifier: str, start_ms: int, regions: list[str]) -> pb.Promotion:
    return pb.Promotion(
        id=identifier,
        kind=pb.PROMOTION_KIND_COUNT,
        budget=BUDGET,
        start_time=_timestamp(start_ms),
        end_time=_timestamp(start_ms + 2 * 3_600_000),
        regions=regions,
    )


async def _create(admin: Callable[[str], pb_grpc.PromotionAdminAsyncStub], promotions: list[pb.Promotion]) -> float:
    """Creates them, CREATORS at a time, each at `admin(its id)`; returns creates per second."""
    pending = list(reversed(promotions))
    started = time.perf_counter()

    async def creator() -> None:
        while pending:
            promotion = pending.pop()
            await admin(promotion.id).CreatePromotion(pb.CreatePromotionRequest(promotion=promotion), timeout=60)

    await asyncio.gather(*(creator() for _ in range(CREATORS)))
    return len(promotions) / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def center_renew_buckets(center: ServerProcess) -> dict[float, float]:
    """The center's own count of Renew calls answered within each latency bucket (its /metrics, cumulative)."""
    found: dict[float, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{center.metrics_port}/metrics", timeout=30) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("grpc_server_handling_seconds_bucket{") and 'grpc_method="Renew"' in line:
                bound = line.partition('le="')[2].partition('"')[0]
                found[float(bound)] = found.get(float(bound), 0.0) + float(line.rpartition(" ")[2])
    return found


def bucket_percentile(before: dict[float, float], after: dict[float, float], share: float) -> float | None:
    """The upper bound (ms) of the bucket holding the `share` percentile of the calls between two readings of
    cumulative buckets; None without calls, inf beyond the largest bucket."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    return next(bound * 1000 for bound, count in counts if count >= share * total)


def etcd_counters(etcd: RunningServer) -> dict[str, float]:
    """etcd's transaction and committed-proposal counters, from its /metrics."""
    wanted = ("etcd_mvcc_txn_total", "etcd_server_proposals_committed_total")
    found = dict.fromkeys(wanted, 0.0)
    with urllib.request.urlopen(f"http://{etcd.address}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name.split("{")[0] in found:
                found[name.split("{")[0]] += float(value)
    return found


@dataclass
class Sample:
    at: float
    center_cpu_s: float
    """Of every group's center."""
    generator_cpu_s: float
    etcd: dict[str, float]
    renew_buckets: dict[float, float]
    """Of every group's center, added up bucket by bucket."""
    group_cpu_s: dict[str, float]
    group_renew_buckets: dict[str, dict[float, float]]


def _sample(centers: dict[str, ServerProcess], generator: int, etcd: RunningServer) -> Sample:
    cpu = {group: cpu_seconds(center.pid) for group, center in centers.items()}
    buckets = {group: center_renew_buckets(center) for group, center in centers.items()}
    merged = {
        bound: sum(found.get(bound, 0.0) for found in buckets.values()) for bound in set().union(*buckets.values())
    }
    at, generator_cpu = time.perf_counter(), cpu_seconds(generator)
    return Sample(at, sum(cpu.values()), generator_cpu, etcd_counters(etcd), merged, cpu, buckets)


async def _until(wall_ms: int) -> None:
    await asyncio.sleep(max(0.0, (wall_ms - now_ms()) / 1000))


@contextlib.asynccontextmanager
async def _generator(arguments: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("a") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.capacity_regions", *arguments, stdout=asyncio.subprocess.PIPE,
            stderr=errors, limit=EVENT_BYTES,
        )  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _event(process: asyncio.subprocess.Process, name: str, log: Path) -> dict[str, Any]:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        event: dict[str, Any] = json.loads(line)
        if event.pop("event") == name:
            return event
    written = await asyncio.to_thread(log.read_text)
    raise RuntimeError(f"the load generator ended before {name!r}:\n{written[-2000:]}")


def _percentile(ordered: list[float], share: float) -> float:
    return round(ordered[int(share * (len(ordered) - 1))], 1) if ordered else 0.0


async def _measure(promotions: int, groups: int, options: CapacityOptions, workdir: Path) -> dict[str, Any]:
    regions = [f"r{n:02d}" for n in range(options.regions)]
    with etcd_server(extra=ETCD_FLAGS) as etcd:
        shard_map = await lay_out(etcd.address, BASE, groups)
        centers: dict[str, ServerProcess] = {}
        try:
            for group in shard_map.groups:
                centers[group] = start_center(workdir, etcd.address, BASE, group, groups)
            for center in centers.values():
                await await_leader([center.address])
            async with contextlib.AsyncExitStack() as stack:
                channels = {
                    group: await stack.enter_async_context(grpc.aio.insecure_channel(center.address))
                    for group, center in centers.items()
                }

                def admin(promotion_id: str) -> pb_grpc.PromotionAdminAsyncStub:
                    return pb_grpc.PromotionAdminStub(channels[shard_map.owner_of(promotion_id)])

                probes = [_promotion(f"probe-{n}", now_ms() + 3_600_000, ["probe"]) for n in range(PROBES)]
                create_rate = await _create(admin, probes)
                pairs = promotions * len(regions)
                lead_s = 1.3 * promotions / create_rate + pairs / OPENINGS_PER_S_GUESS + SETUP_MARGIN_S
                start_ms = now_ms() + round(lead_s * 1000)
                created = [_promotion(promotion_id(n), start_ms, regions) for n in range(promotions)]
                create_rate = await _create(admin, created)
            measure_from_ms = start_ms + round(OPENING_WINDOW_S * 1000)
            measure_until_ms = measure_from_ms + round(options.seconds * 1000)
            arguments = [
                "--center", center_argument(centers), "--regions", ",".join(regions), "--promotions", str(promotions),
                "--start-ms", str(start_ms), "--measure-from-ms", str(measure_from_ms),
                "--measure-until-ms", str(measure_until_ms), "--orders-per-s", str(options.orders_per_s),
                "--selling", str(options.selling),
            ]  # fmt: skip
            log = workdir / "generator.log"
            async with _generator(arguments, log) as generator:
                opened = await _event(generator, "opened", log)
                first = await _event(generator, "opening_window", log)
                await _until(measure_from_ms)
                before = _sample(centers, generator.pid, etcd)
                await _until(measure_until_ms)
                after = _sample(centers, generator.pid, etcd)
                measured = await _event(generator, "measured", log)
        finally:
            for center in centers.values():
                center.kill()
    row = _row(promotions, regions, options, create_rate, opened, first, measured, before, after)
    row |= _by_group(promoted(shard_map, promotions), len(regions), measured, before, after)
    row["within_limits"] = _within_limits(row["renew_p99_ms"], row["center_cores_max"])
    logged = "".join((workdir / group / "center.log").read_text(errors="replace") for group in centers)
    row["center_leadership_lost"] = logged.count("leadership lost")
    row["center_unretrieved_task_errors"] = logged.count("Task exception was never retrieved")
    return row


def _by_group(
    promotions: dict[str, int], regions: int, measured: dict[str, Any], before: Sample, after: Sample
) -> dict[str, Any]:
    """The figures of each group: its center's cores and renew p99, the agents' renew p99 at it."""
    elapsed = after.at - before.at
    cores = {group: (after.group_cpu_s[group] - cpu) / elapsed for group, cpu in before.group_cpu_s.items()}
    center_p99 = {
        group: bucket_percentile(buckets, after.group_renew_buckets[group], 0.99)
        for group, buckets in before.group_renew_buckets.items()
    }
    latencies: dict[str, list[float]] = {group: [] for group in promotions}
    for (latency, _, _), group in zip(measured["renewals"], measured["renewal_groups"], strict=True):
        latencies[group].append(latency)
    p99 = {group: _percentile(sorted(found), 0.99) for group, found in latencies.items()}
    pairs = {group: owned * regions for group, owned in promotions.items()}
    return group_figures(pairs, cores, p99, center_p99)


def _row(
    promotions: int,
    regions: list[str],
    options: CapacityOptions,
    create_rate: float,
    opened: dict[str, Any],
    first: dict[str, Any],
    measured: dict[str, Any],
    before: Sample,
    after: Sample,
) -> dict[str, Any]:
    pairs = promotions * len(regions)
    elapsed = after.at - before.at
    renewals = [(latency, size) for latency, size, _ in measured["renewals"]]
    latencies = sorted(latency for latency, _ in renewals)
    deductions = measured["deductions"]
    center_cpu = (after.center_cpu_s - before.center_cpu_s) / elapsed
    p99 = _percentile(latencies, 0.99)

    def etcd_rate(name: str) -> float:
        return round((after.etcd[name] - before.etcd[name]) / elapsed, 1)

    return {
        "pairs": pairs,
        "promotions": promotions,
        "regions": len(regions),
        "selling_pairs": len(range(0, promotions, max(1, round(1 / options.selling)))) * len(regions),
        "creates_per_s": round(create_rate),
        "openings": opened["openings"],
        "opening_s": opened["seconds"],
        "openings_per_s": round(opened["openings"] / opened["seconds"]) if opened["seconds"] else 0,
        "opening_calls": opened["opening_calls"],
        "in_place_at_start": first["held_at_start"],
        "first_10s_calls_per_region_per_s": round(max(first["calls_by_region"].values()) / OPENING_WINDOW_S, 1),
        "renew_calls": len(renewals),
        "renew_failed": sum(1 for _, _, status in measured["renewals"] if status != "OK"),
        "renew_failed_by_status": dict(Counter(status for _, _, status in measured["renewals"] if status != "OK")),
        "renew_p50_ms": _percentile(latencies, 0.5),
        "renew_p99_ms": p99,
        "center_renew_p50_ms_at_most": bucket_percentile(before.renew_buckets, after.renew_buckets, 0.5),
        "center_renew_p99_ms_at_most": bucket_percentile(before.renew_buckets, after.renew_buckets, 0.99),
        "renew_request_bytes": round(statistics.fmean(size for _, size in renewals)) if renewals else 0,
        "renew_bytes_per_s": round(sum(size for _, size in renewals) / elapsed),
        "center_cpu_per_s": round(center_cpu, 2),
        "generator_cpu_per_s": round((after.generator_cpu_s - before.generator_cpu_s) / elapsed, 2),
        "etcd_txn_per_s": etcd_rate("etcd_mvcc_txn_total"),
        "etcd_proposals_per_s": etcd_rate("etcd_server_proposals_committed_total"),
        "deductions_per_s": round(deductions / elapsed),
        "center_calls_per_1k": round(1000 * measured["center_calls"] / deductions, 1) if deductions else None,
        "generator_lag_p99_ms": measured["loop_lag_p99_ms"],
        "orders_refused": measured["refused"],
        "orders_skipped": measured["skipped"],
        "calls_by_method": measured["calls_by_method"],
        "load_average_1m": round(os.getloadavg()[0], 1),
        "within_limits": _within_limits(p99, center_cpu),
    }


def _within_limits(renew_p99_ms: float, center_cores: float) -> bool:
    return renew_p99_ms <= LIMIT_P99_MS and center_cores <= LIMIT_CORES


def first_over_limits(rows: list[dict[str, Any]]) -> int | None:
    """The active pairs of the first size where one group stops: renew p99 above LIMIT_P99_MS or the center
    above LIMIT_CORES; None when every size stayed within both."""
    over = (row["pairs"] for row in rows if not _within_limits(row["renew_p99_ms"], row["center_cpu_per_s"]))
    return next(over, None)


async def bench_capacity(options: CapacityOptions) -> dict[str, Any]:
    """Every size at every count of groups in turn, each on its own etcd and centers; a row per size (of one
    group), where one group stops, and with more groups than one their rows and capacity (`group_capacity`)."""
    by_count: dict[int, list[dict[str, Any]]] = {}
    for groups in sorted({1, *options.groups}):
        for promotions in options.sizes:
            with tempfile.TemporaryDirectory(prefix="quota-bench-capacity-") as workdir:
                by_count.setdefault(groups, []).append(await _measure(promotions, groups, options, Path(workdir)))
    rows = by_count.pop(1)
    more = {
        "group_rows": [row for count_rows in by_count.values() for row in count_rows],
        "group_capacity": group_capacity({1: rows, **by_count}),
    }
    return {**_figures(options, rows), **more} if by_count else _figures(options, rows)


def _figures(options: CapacityOptions, rows: list[dict[str, Any]]) -> dict[str, Any]:
    stops = first_over_limits(rows)
    return {
        "regions": options.regions,
        "seconds": options.seconds,
        "orders_per_s": options.orders_per_s,
        "selling": options.selling,
        "limits": {"renew_p99_ms": LIMIT_P99_MS, "center_cores": LIMIT_CORES},
        "rows": rows,
        "one_group_stops_at_pairs": stops,
    }
