"""The benchmark commands run end to end and print the figures they promise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _quota_json(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "quota_center", *args, "--json"], capture_output=True, text=True, timeout=150, check=True
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def test_bench_store_measures_both_stores_through_the_api() -> None:
    figures = _quota_json("bench", "store", "--seconds", "0.5")

    assert figures["sqlite_grants_per_s"] > 0
    assert figures["etcd_grants_per_s"] > 0


def test_bench_failover_loses_nothing() -> None:
    figures = _quota_json("bench", "failover")

    assert 0 < figures["failover_s"] < 2 + 2  # the election TTL plus 2 s
    assert figures["deductions_acked"] > 0
    assert figures["over_issue"] == 0
    assert figures["lost_acks"] == 0
    assert figures["center_consumed"] == figures["agents_deducted"]
