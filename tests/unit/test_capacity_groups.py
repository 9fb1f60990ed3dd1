"""What `quota bench capacity --groups` derives: the promotions each group serves, the capacity each count of
groups predicts from its centers' CPU, the ratio to one group, and its own section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest import capacity_report
from loadtest.capacity_groups import (
    END,
    START,
    fitted_pairs_at_one_core,
    group_capacity,
    group_figures,
    promoted,
    ratio_line,
    write,
)
from quota_common.shards import ShardMap


def _row(groups: int, pairs: int, busiest: float, *, within: bool = True) -> dict[str, Any]:
    per_group = dict.fromkeys([f"g{n}" for n in range(groups)], pairs // groups)
    row = group_figures(per_group, dict.fromkeys(per_group, busiest), dict.fromkeys(per_group, 40.0), {})
    return {
        **dict.fromkeys(capacity_report.COLUMNS, 0),
        **row,
        "pairs": pairs,
        "renew_p50_ms": 10.0,
        "renew_p99_ms": 40.0,
        "center_cpu_per_s": busiest * groups,
        "within_limits": within,
        "load_average_1m": 2.0,
    }


def test_an_even_map_gives_each_group_about_its_share_of_the_promotions() -> None:
    owned = promoted(ShardMap.even(["default", "g1", "g2", "g3"]), 10_000)

    assert sum(owned.values()) == 10_000
    assert all(2_250 <= count <= 2_750 for count in owned.values()), owned
    assert promoted(ShardMap.single(), 300) == {"default": 300}


def test_the_busiest_center_bounds_the_predicted_capacity() -> None:
    row = group_figures({"default": 6_000, "g1": 4_000}, {"default": 0.3, "g1": 0.1}, {}, {})

    assert row["groups"] == 2
    assert row["center_cores_max"] == 0.3
    assert row["group_cores_per_1k_pairs"] == {"default": 0.05, "g1": 0.025}
    assert row["predicted_pairs_at_one_core"] == round(10_000 / 0.3), "the deployment stops when its busiest does"
    assert group_figures({"default": 10}, {"default": 0.0}, {}, {})["predicted_pairs_at_one_core"] is None


def test_the_fitted_line_does_not_scale_the_fixed_cost() -> None:
    # 0.1 core whatever the size, and 0.2 core more per 10,000 pairs: one core at 45,000 pairs.
    rows = [_row(1, 10_000, 0.3), _row(1, 1_000, 0.12)]

    assert fitted_pairs_at_one_core(rows) == 45_000
    assert rows[0]["predicted_pairs_at_one_core"] == 33_333, "proportional: counts the fixed cost as per pair"
    assert fitted_pairs_at_one_core(rows[:1]) is None, "one size gives no line"
    assert fitted_pairs_at_one_core([_row(1, 1_000, 0.3), _row(1, 10_000, 0.3)]) is None, "a flat line"
    assert fitted_pairs_at_one_core([_row(1, 1_000, 1.1), _row(1, 10_000, 1.2)]) is None, "over one core already"


def test_each_count_of_groups_is_set_against_one_group_at_its_largest_size() -> None:
    # Each center: 0.1 core whatever it serves, and 0.2 core more per 10,000 pairs it serves.
    summary = group_capacity(
        {
            1: [_row(1, 1_000, 0.12), _row(1, 10_000, 0.3, within=False)],
            2: [_row(2, 1_000, 0.11), _row(2, 10_000, 0.2)],
        }
    )

    one, two = summary
    assert (one["groups"], one["pairs"], two["pairs"]) == (1, 10_000, 10_000)
    assert (one["ratio_to_one_group"], two["ratio_to_one_group"]) == (1.0, 1.5), "each group's fixed cost counted"
    assert (one["fitted_ratio_to_one_group"], two["fitted_ratio_to_one_group"]) == (1.0, 2.0)
    assert (one["largest_pairs_within_limits"], two["largest_pairs_within_limits"]) == (1_000, 10_000)
    assert "2 groups 1.5x; by the line through the two largest sizes: 2 groups 2.0x" in ratio_line(summary)


@pytest.mark.parametrize("other", [capacity_report.START, "prose"])
def test_the_groups_section_is_replaced_and_leaves_one_groups_section_alone(tmp_path: Path, other: str) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n{other}\none group's figures\n{capacity_report.END}\n")
    figures: dict[str, Any] = {
        "regions": 10,
        "selling": 0.1,
        "orders_per_s": 1000.0,
        "seconds": 30.0,
        "rows": [_row(1, 10_000, 0.3)],
        "group_rows": [_row(4, 10_000, 0.1)],
        "group_capacity": group_capacity({1: [_row(1, 10_000, 0.3)], 4: [_row(4, 10_000, 0.1)]}),
    }

    write(figures, tmp_path, "quota bench capacity --groups 1,4")
    figures["group_capacity"][1]["groups"] = 8
    write(figures, tmp_path, "quota bench capacity --groups 1,8")

    text = page.read_text()
    assert text.count(START) == text.count(END) == 1
    assert text.index("one group's figures") < text.index(START)
    assert "--groups 1,8" in text
    assert "--groups 1,4" not in text
    assert "| 8 |" in text
