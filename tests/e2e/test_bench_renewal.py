"""`quota bench renewal` runs end to end and shows a renewal costing what moved, not what the region knows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quota_testing.launch import run_quota

pytestmark = pytest.mark.e2e


def test_bench_renewal_reports_every_promotion_before_and_only_those_selling_after(tmp_path: Path) -> None:
    done = run_quota(
        "bench", "renewal", "--promotions", "200", "--moving", "0.05", "--rounds", "2", "--json", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    before, after = figures["rows"]
    assert (before["phase"], before["entries_per_renewal"]) == ("before", 200)
    assert (after["phase"], after["entries_per_renewal"]) == ("after", 10)
    assert figures["entries_ratio"] == 20
    assert before["bytes_per_renewal"] > after["bytes_per_renewal"] > 0
