"""`quota simulate`: the distribution model holds its promises on every scenario, and the simulator
sees the failures of the strategies it replaces (so it cannot silently go blind)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

# The command runs every scenario once for the whole module (about 35 s here, more on a busy machine).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

Rows = dict[tuple[str, str], dict[str, Any]]
STEADY = ("uniform", "skewed", "moving_hotspot", "midnight_burst", "low_demand")


@pytest.fixture(scope="module")
def rows() -> Rows:
    done = subprocess.run(
        [sys.executable, "-m", "quota_cli", "simulate", "--json"], capture_output=True, text=True, check=True
    )
    return {(row["scenario"], row["strategy"]): row for row in json.loads(done.stdout)["rows"]}


def test_every_scenario_runs_every_strategy(rows: Rows) -> None:
    scenarios = ("uniform", "skewed", "moving_hotspot", "midnight_burst", "partition", "paced", "low_demand", "scale")
    strategies = ("central", "preallocation", "local_async", "distribution")
    assert set(rows) == {(scenario, strategy) for scenario in scenarios for strategy in strategies}


def test_the_distribution_model_never_over_issues_and_sells_out(rows: Rows) -> None:
    for (scenario, strategy), row in rows.items():
        if strategy != "distribution" or scenario == "paced":  # pacing refuses the burst on purpose
            continue
        assert row["over_issue"] == 0, scenario
        assert row["issued"] >= 0.999 * min(row["budget"], row["demand"]) or scenario == "scale", scenario
        assert row["stranded"] <= 0.001 * min(row["budget"], row["demand"]), scenario


def test_the_distribution_model_rarely_calls_the_center_in_steady_state(rows: Rows) -> None:
    for scenario in STEADY:
        assert rows[(scenario, "distribution")]["center_calls_per_1k"] < 5, scenario


def test_the_distribution_model_answers_at_in_region_latency(rows: Rows) -> None:
    for scenario in ("uniform", "skewed", "moving_hotspot", "midnight_burst", "low_demand", "scale"):
        in_region = rows[(scenario, "preallocation")]["p99_ms"]  # never leaves the region
        assert rows[(scenario, "distribution")]["p99_ms"] <= 2 * in_region, scenario


def test_local_deduction_with_async_reports_over_issues_under_skew_and_bursts(rows: Rows) -> None:
    assert rows[("skewed", "local_async")]["over_issue"] > 0
    assert rows[("midnight_burst", "local_async")]["over_issue"] > 0


def test_pre_allocation_strands_quota_when_demand_moves(rows: Rows) -> None:
    moved = rows[("moving_hotspot", "preallocation")]
    assert moved["stranded"] > 0.05 * moved["budget"]
    assert moved["sell_through"] < 0.95


def test_central_deduction_pays_the_round_trip_on_every_order(rows: Rows) -> None:
    for (scenario, strategy), row in rows.items():
        if strategy == "central":
            assert row["center_calls_per_1k"] >= 999, scenario
            assert row["p50_ms"] > 5 * rows[(scenario, "preallocation")]["p50_ms"], scenario


def test_only_strategies_with_a_center_keep_to_a_release_curve(rows: Rows) -> None:
    assert rows[("paced", "distribution")]["pacing_deviation"] == 0
    assert rows[("paced", "distribution")]["over_issue"] == 0
    assert rows[("paced", "central")]["pacing_deviation"] == 0
    for burning in ("preallocation", "local_async"):
        assert rows[("paced", burning)]["pacing_deviation"] > 0.25 * rows[("paced", burning)]["budget"]
