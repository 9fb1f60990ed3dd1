"""Writes what `quota bench` measured: docs/benchmarks.md (table, machine, command) and a chart."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtest.compare import Comparison

COLUMNS = {
    "strategy": "strategy",
    "wan_rtt_ms": "WAN RTT ms",
    "deductions": "deductions",
    "throughput_per_s": "per s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "p999_ms": "p999 ms",
    "center_calls_per_1k": "center calls/1k",
    "over_issue": "over-issue",
    "refused": "refused (exhausted)",
    "errors": "errors",
}
SUMMARY = (
    "echo_per_s",
    "echo_mtls_per_s",
    "echo_mtls_authz_per_s",
    "echo_redis_per_s",
    "lua_loop_per_s",
    "agent_vs_echo_ratio",
    "agent_vs_echo_redis_ratio",
    "agent_vs_lua_ratio",
    "agent_memory_client_vs_stub_ratio",
    "agent_redis_client_vs_stub_ratio",
    "agent_memory_mtls_ratio",
    "agent_redis_mtls_ratio",
    "echo_mtls_ratio",
    "echo_mtls_authz_ratio",
)
"""The figures `quota bench` prints under its table."""
CHART = "benchmarks.png"
MEASURED_START = "<!-- measured: written by `quota bench`, do not edit by hand -->"
MEASURED_END = "<!-- end measured -->"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    versions = (
        f"Python {platform.python_version()}, grpcio {metadata.version('grpcio')}, redis-py {metadata.version('redis')}"
    )
    return f"{os.cpu_count()} cores ({cpu}), {versions}, {' '.join(redis_version[:3])}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[key]:,}" if isinstance(row[key], int) else str(row[key]) for key in COLUMNS) + " |"
        )
    return "\n".join(lines)


def _before_after(per_s: list[int]) -> str:
    return f"{per_s[0]:,} right before the agent rows at 0 ms, {per_s[1]:,} right after"


def measured_section(comparison: Comparison, chart_written: bool) -> str:
    figures = comparison.figures
    command = "quota bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "quota bench"
    parts = [
        MEASURED_START,
        f"Measured {datetime.date.today().isoformat()} on {machine()}, with `{command}`: "
        f"{figures['clients']} concurrent clients, {figures['seconds']} s per row.",
        "",
        table(figures["rows"]),
        "",
        f"- Bare grpc.aio echo server with the agent's API: {figures['echo_per_s']:,} calls/s "
        f"({_before_after(figures['echo_per_s_before_after'])}); "
        f"agent (Redis ledger, WAN 0 ms, called through the bare stub as the echo server is) over echo: "
        f"**{figures['agent_vs_echo_ratio']}**.",
        f"- The same echo server making one batched durable write to the region's Redis per call, as the "
        f"Redis ledger does: {figures['echo_redis_per_s']:,} calls/s "
        f"({_before_after(figures['echo_redis_per_s_before_after'])}); "
        f"agent over it: **{figures['agent_vs_echo_redis_ratio']}**.",
        f"- The agent's deduction script in a sequential loop from one client: {figures['lua_loop_per_s']:,} calls/s; "
        f"agent over loop: **{figures['agent_vs_lua_ratio']}**.",
        f"- The rows call the agents through quota_client, as order services do; over the same agent called "
        f"through the bare generated stub, taking turns with it: in-process ledger "
        f"**{figures['agent_memory_client_vs_stub_ratio']}**, "
        f"Redis ledger **{figures['agent_redis_client_vs_stub_ratio']}** (what the client costs, not the agent).",
        f"- Mutual TLS on every link (orders to agent, agent to center) and the authorization interceptor on every "
        f"call, over plaintext, each agent taking turns with its plaintext row ({figures['rounds']} rounds): "
        f"in-process ledger **{figures['agent_memory_mtls_ratio']}**, "
        f"Redis ledger **{figures['agent_redis_mtls_ratio']}**.",
        f"- The echo server with mutual TLS, taking turns with the other echo servers: "
        f"{figures['echo_mtls_per_s']:,} calls/s "
        f"({_before_after(figures['echo_mtls_per_s_before_after'])}), **{figures['echo_mtls_ratio']}** of plaintext; "
        f"with mutual TLS and the authorization interceptor: {figures['echo_mtls_authz_per_s']:,} calls/s "
        f"({_before_after(figures['echo_mtls_authz_per_s_before_after'])}), **{figures['echo_mtls_authz_ratio']}**.",
    ]
    if chart_written:
        parts += ["", f"![Latency distributions]({CHART})"]
    return "\n".join([*parts, MEASURED_END])


def splice(page: Path, start: str, end: str, section: str) -> None:
    """Replaces what lies between the markers `start` and `end` of `page` with `section` (which carries them);
    the prose around stays. Where the markers are missing, the section is appended (to a new page if need be)."""
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    if start not in text:
        text = f"{text.rstrip()}\n\n{start}\n{end}\n"
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    page.write_text(before + section + after)


def write(comparison: Comparison, docs: Path) -> list[Path]:
    """Replaces the measured section of docs/benchmarks.md (the prose around it stays) and redraws
    the chart when matplotlib is installed (the docs extra)."""
    docs.mkdir(parents=True, exist_ok=True)
    chart_written = _chart(comparison, docs / CHART)
    page = docs / "benchmarks.md"
    splice(page, MEASURED_START, MEASURED_END, measured_section(comparison, chart_written))
    return [page, docs / CHART] if chart_written else [page]


def _chart(comparison: Comparison, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(9, 5))
    for label, latencies in sorted(comparison.latencies_ms.items()):
        ordered = sorted(latencies)
        if not ordered:
            continue
        share = [(index + 1) / len(ordered) for index in range(len(ordered))]
        axes.plot(ordered, share, label=label, linestyle="--" if label.endswith("@80") else "-")
    axes.set_xscale("log")
    axes.set_xlabel("deduction latency, ms (log)")
    axes.set_ylabel("share of deductions at or below")
    axes.set_title("Deduction latency by strategy and WAN round trip to the center")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
