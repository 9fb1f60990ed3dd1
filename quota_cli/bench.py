"""`quota bench`: benchmarks that start what they need on loopback, print figures and stop it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from quota_cli.bench_capacity import capacity
from quota_cli.console import bench_console
from quota_cli.output import print_json, print_rows, show
from quota_common.config import FiniteFloatRange


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=10.0, show_default=True, help="Per measurement.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent order services.")
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    show_default=True,
    help="Where benchmarks.md (its measured section) and benchmarks.png are written.",
)
@click.pass_context
def bench(context: click.Context, as_json: bool, seconds: float, clients: int, docs: Path) -> None:
    """Benchmarks that print figures (they start what they need on loopback and stop it).

    Without a subcommand: our agents against central deduction and a central Redis script, at a
    WAN round trip of 0 and 80 ms to the center, on the same demand in one run; and each agent with
    mutual TLS on every link beside itself in plaintext (the ratio: what security costs)."""
    if context.invoked_subcommand is not None:
        return
    from loadtest.compare import Options, compare
    from loadtest.report import COLUMNS, SUMMARY, write

    comparison = asyncio.run(compare(Options(seconds, clients)))
    written = write(comparison, docs)
    if as_json:
        print_json(comparison.figures)
        return
    print_rows("quota bench", comparison.figures["rows"], COLUMNS)
    for name in SUMMARY:
        click.echo(f"{name}: {comparison.figures[name]}")
    click.echo("wrote " + ", ".join(str(path) for path in written))


@bench.command("store")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=3.0, show_default=True, help="Per store.")
def bench_store(as_json: bool, seconds: float) -> None:
    """Grants per second through the center's gRPC API, on SQLite and on etcd."""
    from loadtest.bench import bench_store as run

    show("quota bench store", asyncio.run(run(seconds)), as_json)


@bench.command("groups")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per group count.")
@click.option("--workers", type=click.IntRange(min=1, max=256), default=16, show_default=True, help="Concurrent loops.")
def bench_groups(as_json: bool, seconds: float, workers: int) -> None:
    """Grants per second that 1, 2 and 4 center groups on one etcd serve, and the ratio to one group."""
    from loadtest.bench_groups import bench_groups as run

    figures = asyncio.run(run(seconds, workers))
    if as_json:
        print_json(figures)
        return
    print_rows(f"quota bench groups ({workers} workers)", figures["rows"], GROUPS_COLUMNS)


GROUPS_COLUMNS = {"groups": "center groups", "grants_per_s": "grants/s", "ratio_to_one_group": "ratio to one group"}


@bench.command("failover")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_failover(as_json: bool) -> None:
    """Two centers on etcd and two agents under load; SIGKILL the leader; measure the takeover."""
    from loadtest.bench import bench_failover as run

    show("quota bench failover", asyncio.run(run()), as_json)


@bench.command("ledger")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per row.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent clients.")
def bench_ledger(as_json: bool, seconds: float, clients: int) -> None:
    """Deductions per second through one agent on each ledger, and the bare Redis script."""
    from loadtest.bench_ledger import bench_ledger as run

    show("quota bench ledger", asyncio.run(run(seconds, clients)), as_json)


@bench.command("cells")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=6.0, show_default=True, help="Per configuration.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent clients.")
@click.option("--cells", "counts", default="1,2,4", show_default=True, help="Comma-separated cell counts, from 1.")
def bench_cells(as_json: bool, seconds: float, clients: int, counts: str) -> None:
    """One region's deductions per second as 1, 2 and 4 cells, each an agent on its own Redis."""
    from loadtest.bench_cells import CellsOptions
    from loadtest.bench_cells import bench_cells as run

    try:
        numbers = tuple(int(count) for count in counts.split(","))
    except ValueError:
        numbers = ()
    if not numbers or numbers[0] != 1 or len(set(numbers)) != len(numbers) or not all(1 <= n <= 16 for n in numbers):
        raise click.BadParameter(f"{counts!r}: give distinct counts of 1 to 16 cells, the first 1, such as 1,2,4")
    figures = asyncio.run(run(CellsOptions(numbers, seconds, clients)))
    if as_json:
        print_json(figures)
        return
    print_rows(f"quota bench cells ({figures['cores']} cores for every process)", figures["rows"], CELLS_COLUMNS)


CELLS_COLUMNS = {
    "cells": "cells",
    "per_s": "deductions/s",
    "ratio_to_1_cell": "ratio to 1 cell",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "agent_cores": "agent cores",
    "redis_cores": "Redis cores",
    "load_generator_cores": "load gen cores",
    "per_agent_core_s": "per agent core-s",
    "over_issue": "over-issue",
    "errors": "errors",
}


@bench.command("freeze")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--freezes", type=click.IntRange(min=2), default=50, show_default=True, help="Per link.")
def bench_freeze(as_json: bool, freezes: int) -> None:
    """Time from a freeze's answer until every region refuses the promotion: push link, then pull only."""
    from loadtest.bench_freeze import bench_freeze as run

    show("quota bench freeze", asyncio.run(run(freezes)), as_json)


@bench.command("opening")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--promotions", type=click.IntRange(min=1), default=10_000, show_default=True, help="Starting together.")
def bench_opening(as_json: bool, promotions: int) -> None:
    """Time until three agents hold an opening allotment of every promotion that starts soon."""
    from loadtest.bench_opening import bench_opening as run

    show("quota bench opening", asyncio.run(run(promotions)), as_json)


@bench.command("renewal")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--promotions", type=click.IntRange(min=1), default=10_000, show_default=True, help="The region knows.")
@click.option(
    "--moving", type=FiniteFloatRange(min=0.0001, max=1.0), default=0.01, show_default=True, help="Share selling."
)
@click.option("--rounds", type=click.IntRange(min=1, max=100), default=5, show_default=True, help="Renewals measured.")
def bench_renewal(as_json: bool, promotions: int, moving: float, rounds: int) -> None:
    """Promotions, bytes and store writes per renewal when few of many promotions sell: every promotion
    reported (before the region lease) against only those that moved (after), in one run."""
    from loadtest.bench_renewal import COLUMNS
    from loadtest.bench_renewal import bench_renewal as run

    figures = asyncio.run(run(promotions, moving, rounds))
    if as_json:
        print_json(figures)
        return
    print_rows(f"quota bench renewal ({promotions:,} promotions, {moving:.1%} selling)", figures["rows"], COLUMNS)
    for name in ("entries_ratio", "bytes_ratio", "store_writes_ratio"):
        click.echo(f"{name}: {figures[name]}")


@bench.command("recovery")
@click.option("--json", "as_json", is_flag=True, help='Print {"target_s": ..., "outages": [...]}, one row per outage.')
@click.option(
    "--outages",
    default="5,30,120",
    show_default=True,
    help="Comma-separated seconds the center stays away, one outage each.",
)
@click.option(
    "--renew-interval",
    type=FiniteFloatRange(min=0.05),
    default=3.0,
    show_default=True,
    help="The agent's renew interval (the center's lease TTL is three times it).",
)
def bench_recovery(as_json: bool, outages: str, renew_interval: float) -> None:
    """Time from the center's return after an outage (SIGKILL, restart on the same port and store)
    until the agent accepts orders again; the target is one renew interval plus a second."""
    from loadtest.recovery import RecoveryOptions
    from loadtest.recovery import bench_recovery as run

    try:
        lengths = tuple(float(length) for length in outages.split(","))
    except ValueError:
        lengths = ()
    if not lengths or not all(0 <= length <= 3600 for length in lengths):
        raise click.BadParameter(f"{outages!r}: give seconds from 0 to 3600, such as 5,30,120", param_hint="--outages")
    figures = asyncio.run(run(RecoveryOptions(lengths, renew_interval)))
    if as_json:
        print_json(figures)
        return
    rows = [
        {
            **row,
            "back_to_serving_s": "never" if row["back_to_serving_s"] is None else row["back_to_serving_s"],
            "within_target": "yes" if row["within_target"] else "NO",
        }
        for row in figures["outages"]
    ]
    print_rows(f"quota bench recovery (target: {figures['target_s']} s)", rows, RECOVERY_COLUMNS)


RECOVERY_COLUMNS = {
    "outage_s": "outage s",
    "back_to_serving_s": "back to serving s",
    "renew_interval_s": "renew interval s",
    "within_target": "within target",
    "orders_refused": "orders refused",
}


@bench.command("cost")
@click.option("--json", "as_json", is_flag=True, help='Print {"servers": [...]}, one row per server.')
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per server and round.")
@click.option("--rounds", type=click.IntRange(1, 10), default=2, show_default=True, help="Times over the servers.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent order services.")
@click.option(
    "--wait-ms",
    type=FiniteFloatRange(min=0.01),
    default=0.7,
    show_default=True,
    help="How long echo_waiting waits per call (a Redis round trip under load).",
)
def bench_cost(as_json: bool, seconds: float, rounds: int, clients: int, wait_ms: float) -> None:
    """Where the agent's calls per second go: echo servers that add, step by step, what the agent's
    Redis round trip adds (its latency alone, a Redis without disk, one that fsyncs), then the agent."""
    from loadtest.cost import CostOptions, cost

    figures = asyncio.run(cost(CostOptions(seconds, rounds, clients, wait_ms)))
    if as_json:
        print_json(figures)
        return
    rows = [{**row, "per_s": " / ".join(f"{rate:,}" for rate in row["per_s"])} for row in figures["servers"]]
    print_rows("quota bench cost", rows, COST_COLUMNS)


@bench.command("embedded")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...], "offered_rows": [...], ratios}.')
@click.option("--seconds", type=FiniteFloatRange(min=0.5), default=5.0, show_default=True, help="Per row.")
@click.option(
    "--rounds", type=click.IntRange(1, 10), default=2, show_default=True, help="Stretches rows take turns in."
)
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent order services.")
def bench_embedded(as_json: bool, seconds: float, rounds: int, clients: int) -> None:
    """The agent embedded in the order service against the bare EVALSHA it runs, the agent over gRPC against
    an echo server making the same Redis write, and both agents' latency at the same offered load."""
    from loadtest.bench_embedded import EmbeddedOptions, bench_embedded

    figures = asyncio.run(bench_embedded(EmbeddedOptions(seconds, clients, rounds)))
    if as_json:
        print_json(figures)
        return
    print_rows("quota bench embedded (closed loop)", figures["rows"], EMBEDDED_COLUMNS)
    offered = f"quota bench embedded (open loop, {figures['offered_per_s']:,} orders/s offered)"
    print_rows(offered, figures["offered_rows"], EMBEDDED_COLUMNS)
    for name, value in figures.items():
        if name.endswith(("_ratio", "_deduction")):
            click.echo(f"{name}: {value}")


EMBEDDED_COLUMNS = {
    "strategy": "strategy",
    "deductions": "deductions",
    "throughput_per_s": "per s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "p999_ms": "p999 ms",
    "refused": "refused (exhausted)",
    "errors": "errors",
}

COST_COLUMNS = {
    "server": "server",
    "mean_per_s": "calls/s",
    "per_s": "per round",
    "vs_echo": "vs echo",
    "cpu_us_per_call": "server CPU µs/call",
}


bench.add_command(capacity)
bench.add_command(bench_console)
