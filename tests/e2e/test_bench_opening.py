"""`quota bench opening` runs end to end and reports every promotion opened in every region."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quota_testing.launch import run_quota

pytestmark = pytest.mark.e2e


def test_bench_opening_reports_the_time_to_open_every_promotion_and_the_calls_it_took(tmp_path: Path) -> None:
    done = run_quota("bench", "opening", "--promotions", "20", "--json", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["promotions"], figures["regions"]) == (20, 3)
    assert figures["open_s"] > 0
    assert set(figures["center_calls"]) == {"eu", "us", "ap"}
