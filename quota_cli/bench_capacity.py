"""`quota bench capacity`: the active (region, promotion) pairs one center group serves (loadtest.capacity)."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path

import click

from quota_common.config import FiniteFloatRange


@click.command("capacity")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...], "one_group_stops_at_pairs": ...}.')
@click.option(
    "--promotions",
    default="1000,10000",
    show_default=True,
    help="Comma-separated promotions per region, one size each (x --regions active pairs).",
)
@click.option(
    "--groups",
    default="1",
    show_default=True,
    help="Comma-separated counts of center groups on one etcd, every size at each (1 is always measured).",
)
@click.option("--large", is_flag=True, help="Add 100,000 promotions per region (a million pairs; long to set up).")
@click.option("--regions", type=click.IntRange(1, 100), default=10, show_default=True, help="Regions served.")
@click.option("--seconds", type=FiniteFloatRange(min=3), default=30.0, show_default=True, help="Measured per size.")
@click.option(
    "--orders-per-s", type=FiniteFloatRange(min=1), default=1000.0, show_default=True, help="Offered, all regions."
)
@click.option(
    "--selling",
    type=FiniteFloatRange(min=0.001, max=1),
    default=0.1,
    show_default=True,
    help="Share of the promotions that sell.",
)
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the figures into DOCS/benchmarks.md (their section) and DOCS/capacity.png.",
)
def capacity(
    as_json: bool,
    promotions: str,
    groups: str,
    large: bool,
    regions: int,
    seconds: float,
    orders_per_s: float,
    selling: float,
    docs: Path | None,
) -> None:
    """Active (region, promotion) pairs one center group on etcd serves: a center and etcd as processes, and a
    process of agents (one per region, the real agent code) taking opening allotments of every promotion, then
    selling a share of them. Per size: renew p50/p99, center CPU, etcd transactions, renewal bytes, center calls
    per 1,000 deductions, openings per second; and the first size where one group stops. With --groups, the
    same with 2, 4, ... center groups (the shard map laid out evenly over them), per group its center's cores and
    renew p99, and the capacity relative to one group's."""
    from rich.console import Console
    from rich.table import Table

    from loadtest import capacity_groups
    from loadtest.capacity import LARGE_SIZE, CapacityOptions, bench_capacity
    from loadtest.capacity_report import COLUMNS, cell, verdict, write

    sizes = _counts(promotions, 1_000_000, "--promotions", "counts such as 1000,10000")
    if large and LARGE_SIZE not in sizes:
        sizes.append(LARGE_SIZE)
    counts = _counts(groups, 8, "--groups", "counts of 1 to 8 groups, such as 1,2,4")
    options = CapacityOptions(tuple(sizes), regions, seconds, orders_per_s, selling, tuple(counts))
    figures = asyncio.run(bench_capacity(options))
    written = write(figures, docs) if docs is not None else []
    if docs is not None and "group_capacity" in figures:
        written.append(capacity_groups.write(figures, docs, "quota " + shlex.join(sys.argv[1:])))
    if as_json:
        click.echo(json.dumps(figures))
        return
    table = Table(title="quota bench capacity")
    for header in COLUMNS.values():
        table.add_column(header, justify="right")
    for row in figures["rows"]:
        table.add_row(*(cell(row[key]) for key in COLUMNS))
    Console(width=max(120, Console().width)).print(table)
    click.echo(verdict(figures))
    if "group_capacity" in figures:
        by_count = Table(title="quota bench capacity: center groups on one etcd (largest size)")
        for header in capacity_groups.GROUP_COLUMNS.values():
            by_count.add_column(header, justify="right")
        for summary in figures["group_capacity"]:
            by_count.add_row(*capacity_groups.cells(summary))
        Console(width=max(120, Console().width)).print(by_count)
        click.echo(capacity_groups.ratio_line(figures["group_capacity"]))
    if written:
        click.echo("wrote " + ", ".join(str(path) for path in written))


def _counts(text: str, most: int, option: str, example: str) -> list[int]:
    """A comma-separated list of counts from 1 to `most`; BadParameter naming `option` otherwise."""
    try:
        counts = [int(count) for count in text.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(1 <= count <= most for count in counts):
        raise click.BadParameter(f"{text!r}: give {example}", param_hint=option)
    return counts
