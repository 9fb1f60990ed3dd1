"""What `quota bench capacity` measured, as a table and as its section of docs/benchmarks.md with a chart."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path
from typing import Any

from loadtest.report import machine, splice

COLUMNS = {
    "pairs": "pairs",
    "renew_p50_ms": "p50 ms",
    "renew_p99_ms": "p99 ms",
    "renew_failed": "failed",
    "center_cpu_per_s": "center cores",
    "etcd_txn_per_s": "etcd txn/s",
    "renew_request_bytes": "B/renew",
    "center_calls_per_1k": "calls/1k",
    "deductions_per_s": "orders/s",
    "openings_per_s": "open/s",
    "in_place_at_start": "opened",
    "first_10s_calls_per_region_per_s": "calls/region/s 10 s",
    "generator_cpu_per_s": "gen cores",
    "within_limits": "ok",
}
"""The table's columns (`--json` has more: etcd proposals, renewal bytes per second, the generator's lag)."""
CHART = "capacity.png"
START = "<!-- capacity: written by `quota bench capacity --docs docs`, do not edit by hand -->"
END = "<!-- end capacity -->"


def cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:,}" if isinstance(value, int) else str(value)


def verdict(figures: dict[str, Any]) -> str:
    limits = figures["limits"]
    stops = figures["one_group_stops_at_pairs"]
    where = (
        f"one center group stops at {stops:,} active pairs"
        if stops
        else "one center group stayed within the limits at every size measured"
    )
    return f"{where} (limits: renew p99 {limits['renew_p99_ms']:g} ms, center {limits['center_cores']:g} core)"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[key]) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def section(figures: dict[str, Any], chart_written: bool) -> str:
    command = "quota " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "quota bench capacity"
    parts = [
        START,
        f"Measured {datetime.date.today().isoformat()} on {machine()}, with `{command}`: {figures['regions']} "
        f"regions, {figures['selling']:.0%} of the promotions selling, {figures['orders_per_s']:,.0f} orders/s "
        f"offered, {figures['seconds']:g} s measured per size; the machine's load average (1 min) at the end of each "
        f"size: {', '.join(str(row['load_average_1m']) for row in figures['rows'])}.",
        "",
        table(figures["rows"]),
        "",
        f"**{verdict(figures)[0].upper()}{verdict(figures)[1:]}.**",
    ]
    if chart_written:
        parts += ["", f"![Capacity of one center group]({CHART})"]
    return "\n".join([*parts, END])


def write(figures: dict[str, Any], docs: Path) -> list[Path]:
    """Replaces the capacity section of docs/benchmarks.md (appended the first time) and redraws the chart
    when matplotlib is installed (the docs extra)."""
    docs.mkdir(parents=True, exist_ok=True)
    chart_written = _chart(figures["rows"], docs / CHART)
    page = docs / "benchmarks.md"
    splice(page, START, END, section(figures, chart_written))
    return [page, docs / CHART] if chart_written else [page]


def _chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pairs = [row["pairs"] for row in rows]
    figure, (latency, load) = plt.subplots(1, 2, figsize=(11, 4.5))
    latency.plot(pairs, [row["renew_p50_ms"] for row in rows], marker="o", label="renew p50")
    latency.plot(pairs, [row["renew_p99_ms"] for row in rows], marker="o", label="renew p99")
    latency.axhline(500, color="grey", linestyle="--", label="limit (p99)")
    latency.set_yscale("log")
    latency.set_ylabel("ms (log)")
    load.plot(pairs, [row["center_cpu_per_s"] for row in rows], marker="o", label="center CPU, cores")
    load.axhline(1, color="grey", linestyle="--", label="limit (one core)")
    load.set_ylabel("cores")
    load.set_ylim(bottom=0)
    txn = load.twinx()
    txn.plot(pairs, [row["etcd_txn_per_s"] for row in rows], marker="s", color="tab:green", label="etcd txn/s")
    txn.set_ylabel("etcd transactions per second")
    txn.set_ylim(bottom=0)
    for axes in (latency, load):
        axes.set_xscale("log")
        axes.set_xlabel("active (region, promotion) pairs (log)")
        axes.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize=8)
    handles = load.get_legend_handles_labels()
    more = txn.get_legend_handles_labels()
    load.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="center left")
    figure.suptitle("quota bench capacity: one center group on etcd")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
