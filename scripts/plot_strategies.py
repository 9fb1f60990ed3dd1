"""Redraws docs/strategies.png and prints the results table of docs/strategies.md.

.venv/bin/pip install -e '.[docs]'   # matplotlib
.venv/bin/python scripts/plot_strategies.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.simulation.run import STRATEGIES, simulate_all

CHART = Path(__file__).resolve().parent.parent / "docs" / "strategies.png"
COLUMNS = (
    "scenario", "strategy", "issued", "over_issue", "stranded", "sell_through",
    "p50_ms", "p99_ms", "p999_ms", "center_calls_per_1k", "waited_share", "pacing_deviation",
)  # fmt: skip


def lost_share(row: dict[str, Any]) -> float:
    """Over-issued plus stranded quota, in percent of the budget: money lost either way."""
    lost: float = 100 * (row["over_issue"] + row["stranded"]) / row["budget"]
    return lost


def draw(rows: list[dict[str, Any]]) -> None:
    scenarios = list(dict.fromkeys(row["scenario"] for row in rows))
    by_key = {(row["scenario"], row["strategy"]): row for row in rows}
    figure, (latency, money) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    width = 0.2
    for offset, strategy in enumerate(STRATEGIES):
        xs = [n + (offset - 1.5) * width for n in range(len(scenarios))]
        p99 = [by_key[(scenario, strategy)]["p99_ms"] for scenario in scenarios]
        lost = [lost_share(by_key[(scenario, strategy)]) for scenario in scenarios]
        latency.bar(xs, p99, width, label=strategy)
        money.bar(xs, lost, width, label=strategy)
    latency.set_yscale("log")
    latency.set_ylabel("p99 deduction latency, ms (log)")
    latency.legend(ncols=4, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    money.set_ylabel("over-issued + stranded, % of budget")
    money.set_xticks(range(len(scenarios)), scenarios, rotation=15)
    figure.suptitle("quota simulate: the same demand, four strategies", y=0.995)
    figure.tight_layout()
    figure.savefig(CHART, dpi=110)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[column]) for column in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    results = simulate_all()
    draw(results)
    print(table(results))
