"""What `quota bench capacity` writes: its own section of docs/benchmarks.md, and where one group stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.capacity import bucket_percentile, first_over_limits
from loadtest.capacity_report import COLUMNS, END, START, verdict, write


def _row(pairs: int, p99_ms: float, cores: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, 0)
    return {**row, "pairs": pairs, "renew_p99_ms": p99_ms, "center_cpu_per_s": cores, "load_average_1m": 1.5}


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "regions": 10,
        "seconds": 30.0,
        "orders_per_s": 1000.0,
        "selling": 0.1,
        "limits": {"renew_p99_ms": 500.0, "center_cores": 1.0},
        "rows": rows,
        "one_group_stops_at_pairs": first_over_limits(rows),
    }


def test_one_group_stops_at_the_first_size_over_either_limit() -> None:
    assert first_over_limits([_row(10_000, 120.0, 0.3), _row(100_000, 480.0, 0.9)]) is None
    assert first_over_limits([_row(10_000, 120.0, 0.3), _row(100_000, 501.0, 0.2)]) == 100_000
    assert first_over_limits([_row(10_000, 120.0, 1.2), _row(100_000, 900.0, 1.5)]) == 10_000


def test_the_centers_percentiles_are_the_bounds_of_the_buckets_the_window_filled() -> None:
    before = {0.01: 10.0, 0.1: 10.0, 1.0: 10.0, float("inf"): 10.0}
    after = {0.01: 60.0, 0.1: 108.0, 1.0: 110.0, float("inf"): 110.0}

    assert bucket_percentile(before, after, 0.5) == 10.0
    assert bucket_percentile(before, after, 0.99) == 1000.0
    assert bucket_percentile(after, after, 0.99) is None, "no call in the window"
    assert bucket_percentile({}, {0.5: 0.0, float("inf"): 2.0}, 0.99) == float("inf")


def test_the_verdict_names_where_the_group_stops_and_the_limits() -> None:
    stopped = verdict(_figures([_row(10_000, 120.0, 0.3), _row(100_000, 2_000.0, 0.6)]))
    held = verdict(_figures([_row(10_000, 120.0, 0.3)]))

    assert "stops at 100,000 active pairs" in stopped
    assert "within the limits at every size" in held
    assert "renew p99 500 ms" in held
    assert "1 core" in held


def test_the_section_is_added_once_and_replaced_keeping_the_page_around_it(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nprose before\n")

    write(_figures([_row(10_000, 120.0, 0.3)]), tmp_path)
    page.write_text(page.read_text() + "\nprose after\n")
    write(_figures([_row(10_000, 120.0, 0.3), _row(100_000, 2_000.0, 0.6)]), tmp_path)

    text = page.read_text()
    assert text.count(START) == text.count(END) == 1
    assert text.index("prose before") < text.index(START) < text.index("| 100,000 |") < text.index(END)
    assert text.index(END) < text.index("prose after")
