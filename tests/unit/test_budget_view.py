"""What `quota budget usage` makes of the center's answer, and how it renders without a terminal."""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console

from quota_admin.usage import usage_from_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_cli.budget_view import bar, offer_label, usage_json, usage_table
from quota_common.model import Kind, Promotion
from quota_testing.support import promotion

SPENDING = pb.Usage(
    promotion=promotion("[sale]", budget=1000, regions=("eu", "us", "ap")),
    unallocated=880,
    regions=[
        pb.RegionUsage(region="us", granted=30, consumed=10, held=20, lease_state=pb.LEASE_STATE_EXPIRED),
        pb.RegionUsage(
            region="eu",
            granted=100,
            returned=10,
            consumed=60,
            written_off=5,
            held=25,
            lease_state=pb.LEASE_STATE_ACTIVE,
            demand_per_minute=42,
        ),
    ],
)


def test_every_allowed_region_is_listed_in_the_promotions_order() -> None:
    report = usage_from_pb(SPENDING)

    assert [(r.region, r.granted, r.spent, r.lease_state) for r in report.regions] == [
        ("eu", 100, 60, "active"),
        ("us", 30, 10, "expired"),
        ("ap", 0, 0, "none"),
    ]


def test_json_has_the_documented_keys_and_integers_only() -> None:
    document = usage_json(usage_from_pb(SPENDING))

    assert (document["budget"], document["unallocated"], document["promotion"]["id"]) == (1000, 880, "[sale]")
    assert document["regions"][0] == {
        "region": "eu",
        "granted": 100,
        "spent": 60,
        "returned": 10,
        "held": 25,
        "written_off": 5,
        "lease_state": "active",
        "burn_per_minute": 42,
    }
    numbers = [value for region in document["regions"] for value in region.values() if not isinstance(value, str)]
    assert all(type(value) is int for value in numbers)


def test_bar_fills_in_proportion_and_rounds_down() -> None:
    assert bar(0, 10, width=10) == "░" * 10 + "   0.0%"
    assert bar(5, 10, width=10) == "█" * 5 + "░" * 5 + "  50.0%"
    assert bar(1, 3, width=10) == "█" * 3 + "░" * 7 + "  33.3%"
    assert bar(10, 10, width=10) == "█" * 10 + " 100.0%"


def test_the_table_renders_each_region_and_the_totals_without_a_terminal() -> None:
    output = io.StringIO()
    Console(file=output, width=160, markup=False).print(usage_table(usage_from_pb(SPENDING)))
    rendered = output.getvalue()

    rows = {line.split("│")[1].strip(): line for line in rendered.splitlines() if line.startswith("│")}
    assert set(rows) == {"eu", "us", "ap", "total"}
    assert [cell.strip() for cell in rows["eu"].split("│")[2:9]] == ["100", "60", "10", "25", "5", "active", "42"]
    assert [cell.strip() for cell in rows["total"].split("│")[2:7]] == ["130", "70", "10", "45", "5"]
    assert "usage of [sale]" in rendered
    assert "budget 1,000 · unallocated 880 · spent 70 · not frozen" in rendered


def test_the_offer_says_the_price_floor_and_what_happens_below_it() -> None:
    offer = Promotion("flash", Kind.COUNT, "", 10, 0, 1, ("eu",), max_per_order=1)

    assert offer_label(offer) == "no threshold, at most 1 per order"
    assert offer_label(replace(offer, floor_bps=5_000, block_below_floor=True)) == (
        "no threshold, at most 1 per order, a unit sells for at least 50.00 % of its price (refused below)"
    )
    assert offer_label(replace(offer, floor_price=49_950, floor_bps=1_250)).endswith(
        "a unit sells for at least 49,950 and 12.50 % of its price (let through and counted below)"
    )
