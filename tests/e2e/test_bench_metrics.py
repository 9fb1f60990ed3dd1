"""The /metrics page benchmark runs end to end and prints the figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_bench_metrics_measures_the_page_with_every_promotion_and_with_the_top_n() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench_metrics",
            "--promotions",
            "300",
            "--regions",
            "3",
            "--scrapes",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=True,
    )
    figures = json.loads(done.stdout)

    before, after = figures["before"], figures["after"]
    assert (before["top"], after["top"]) == (300, 50)
    # A promotion has 3 series of its own and 7 per region: before, all 300 have them; after, 50 and the rest.
    assert before["series"] - after["series"] == (300 - 50 - 1) * (3 + 7 * 3)
    assert before["bytes"] > after["bytes"] > 0
    assert figures["bytes_ratio"] > 1
    assert after["scrape_ms_median"] > 0
