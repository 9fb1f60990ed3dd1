"""What the console's pages show, from the center's answers: the state a person scans for, what is left and
how long it lasts, the filter, and the burn-down against the pacing plan."""

from __future__ import annotations

from dataclasses import replace

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from quota_admin.usage import RegionSpend, UsageReport
from quota_center.v1 import quota_center_pb2 as pb
from quota_common.model import EmergencyFreeze, Kind, Promotion
from quota_common.policy import Pacing
from quota_console.figures import PromotionRow, burndown, matches, promotion_state, time_to_empty

HOUR_MS = 3_600_000
SALE = Promotion("sale", Kind.COUNT, "", 10_000, 0, 10 * HOUR_MS, ("eu", "us"), owner="spiffe://quota/owner/alice")
OFF = EmergencyFreeze()


@pytest.mark.parametrize(
    ("promotion", "now_ms", "statement", "switch", "state"),
    [
        (SALE, -1, "", OFF, "upcoming"),
        (SALE, HOUR_MS, "open", OFF, "live"),
        (replace(SALE, frozen=True), HOUR_MS, "open", OFF, "frozen"),
        (SALE, HOUR_MS, "open", EmergencyFreeze(everywhere=True), "frozen"),
        (SALE, HOUR_MS, "open", EmergencyFreeze(regions=frozenset({"eu", "us"})), "frozen"),
        (SALE, HOUR_MS, "open", EmergencyFreeze(regions=frozenset({"eu"})), "live"),
        (replace(SALE, frozen=True), 10 * HOUR_MS, "ended", OFF, "ended"),
        (SALE, 10 * HOUR_MS, "settled", OFF, "settled"),
        (replace(SALE, archived=True), 10 * HOUR_MS, "", OFF, "settled"),
    ],
)
def test_a_promotion_has_one_state(
    promotion: Promotion, now_ms: int, statement: str, switch: EmergencyFreeze, state: str
) -> None:
    assert promotion_state(promotion, now_ms, statement, switch) == state


def _spend(region: str, spent: int, burn: int, written_off: int = 0) -> RegionSpend:
    return RegionSpend(region, spent + 100, spent, 0, 100, written_off, "active", burn)


def test_left_and_time_to_empty_come_from_every_region() -> None:
    report = UsageReport(SALE, 5_000, [_spend("eu", 3_000, 40), _spend("us", 1_000, 20, written_off=200)])

    row = PromotionRow(report, "live", open_alerts=1)

    assert (row.spent, row.written_off, row.left, row.burn_per_minute) == (4_000, 200, 5_800, 60)
    assert row.time_to_empty == "1 h 37 min"
    assert PromotionRow(report, "frozen", 0).time_to_empty == "-", "a frozen promotion burns nothing"


@pytest.mark.parametrize(
    ("left", "burn", "shown"),
    [(0, 10, "empty"), (10, 0, "-"), (10, 3, "4 min"), (600, 10, "1 h 00 min"), (100_000, 10, "6 d 22 h")],
)
def test_time_to_empty_reads_at_a_glance(left: int, burn: int, shown: str) -> None:
    assert time_to_empty(left, burn) == shown


@pytest.mark.parametrize(
    ("state", "search", "shown"),
    [("", "", True), ("live", "", True), ("frozen", "", False), ("", "SAL", True), ("", "us", True),
     ("", "alice", True), ("", "bob", False)],
)  # fmt: skip
def test_the_filter_matches_state_and_id_region_or_owner(state: str, search: str, shown: bool) -> None:
    row = PromotionRow(UsageReport(SALE, 0, []), "live", 0)

    assert matches(row, state, search) is shown


def _at(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def test_the_burn_down_carries_each_region_and_follows_the_plan() -> None:
    history = pb.History(
        promotion_id="sale",
        budget=10_000,
        regions=[
            pb.RegionHistory(region="eu", points=[pb.HistoryPoint(at=_at(HOUR_MS), consumed=1_000)]),
            pb.RegionHistory(region="us", points=[pb.HistoryPoint(at=_at(2 * HOUR_MS), consumed=500)]),
        ],
    )

    chart = burndown(history, SALE, now_ms=5 * HOUR_MS)

    assert chart["labels"] == ["unspent", "spent in eu", "spent in us", "plan"]
    times, unspent, eu, us, plan = chart["data"]
    assert times == [3_600, 7_200, 18_000]
    assert eu == [1_000, 1_000, 1_000], "a region's last sample holds until its next"
    assert us == [0, 500, 500]
    assert unspent == [9_000, 8_500, 8_500]
    assert plan == [9_000, 8_000, 5_000], "no pacing: the plan is to sell evenly over the window"
    paced = burndown(history, replace(SALE, pacing=Pacing.HOURLY_CAP, hourly_cap=3_000), now_ms=5 * HOUR_MS)
    assert paced["data"][-1] == [4_000, 1_000, 0]
