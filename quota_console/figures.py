"""What the pages show, computed from the center's answers: pure, no I/O, the time passed in.

state         upcoming, live, frozen, ended or settled (one word a person scans a table for)
left          budget - spent - written off: what can still sell
time to empty left at the burn rate the regions last reported; none while nothing burns
burn-down     left over time by region (usage history) against the pacing plan
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quota_admin.usage import UsageReport
from quota_center.v1 import quota_center_pb2 as pb
from quota_common.model import EmergencyFreeze, Promotion
from quota_common.policy import Pacing, released_amount

STATES = ("upcoming", "live", "frozen", "ended", "settled")
SETTLED = "settled"
"""The state the center's statement names once a promotion's books are final."""


def promotion_state(promotion: Promotion, now_ms: int, statement_state: str, emergency: EmergencyFreeze) -> str:
    """Settled or ended once its window closed (the statement says which), frozen when it or the emergency
    switch over all of its regions stops it, upcoming before its window, live in it."""
    if promotion.archived or statement_state == SETTLED:
        return "settled"
    if promotion.has_ended(now_ms):
        return "ended"
    if promotion.frozen or all(emergency.covers(region) for region in promotion.regions):
        return "frozen"
    if now_ms < promotion.start_ms:
        return "upcoming"
    return "live"


@dataclass(frozen=True)
class PromotionRow:
    """One line of the promotions table; every amount as `quota budget usage` reports it."""

    report: UsageReport
    state: str
    open_alerts: int

    @property
    def promotion(self) -> Promotion:
        return self.report.promotion

    @property
    def spent(self) -> int:
        return self.report.spent

    @property
    def written_off(self) -> int:
        return sum(region.written_off for region in self.report.regions)

    @property
    def left(self) -> int:
        return max(0, self.promotion.budget - self.spent - self.written_off)

    @property
    def burn_per_minute(self) -> int:
        return self.report.burn_per_minute

    @property
    def time_to_empty(self) -> str:
        return time_to_empty(self.left, self.burn_per_minute if self.state == "live" else 0)


def time_to_empty(left: int, burn_per_minute: int) -> str:
    """ "12 min", "3 h 05 min", "2 d 4 h"; "empty" with nothing left, "-" while nothing burns."""
    if left <= 0:
        return "empty"
    if burn_per_minute <= 0:
        return "-"
    minutes = -(-left // burn_per_minute)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // (24 * 60)} d {minutes % (24 * 60) // 60} h"


def matches(row: PromotionRow, state: str, search: str) -> bool:
    """The filter: `state` one of STATES or "" for any; `search` a case-blind part of the id, a region or the
    owner."""
    if state and row.state != state:
        return False
    needle = search.strip().lower()
    promotion = row.promotion
    return not needle or any(needle in text.lower() for text in (promotion.id, promotion.owner, *promotion.regions))


def share(part: int, whole: int) -> float:
    """`part` of `whole` in percent, one decimal, for the bars."""
    return round(100 * part / whole, 1) if whole else 0.0


def burndown(history: pb.History, promotion: Promotion, now_ms: int) -> dict[str, Any]:
    """uPlot's data for the burn-down chart: seconds since the epoch, then what of the budget is unspent (all
    regions; the history has no written-off quota), what each region spent (its curve carried forward between
    its samples), and the plan: unspent if the budget sold exactly as paced (evenly over the window when the
    promotion has no pacing)."""
    times = sorted({point.at.ToMilliseconds() for region in history.regions for point in region.points} | {now_ms})
    spent_by_region = {region.region: _carried(region.points, times) for region in history.regions}
    totals = [sum(spent[index] for spent in spent_by_region.values()) for index in range(len(times))]
    pacing = promotion.pacing if promotion.pacing is not Pacing.NONE else Pacing.LINEAR
    plan = [
        promotion.budget
        - released_amount(promotion.budget, promotion.start_ms, promotion.end_ms, at, pacing, promotion.hourly_cap)
        for at in times
    ]
    return {
        "budget": promotion.budget,
        "plan": "as paced" if promotion.pacing is not Pacing.NONE else "evenly over the window (no pacing set)",
        "labels": ["unspent", *(f"spent in {region}" for region in spent_by_region), "plan"],
        "data": [
            [at / 1000 for at in times],
            [promotion.budget - total for total in totals],
            *spent_by_region.values(),
            plan,
        ],
    }


def _carried(points: Any, times: list[int]) -> list[int]:
    """The region's cumulative spend at each of `times`: its latest sample at or before, 0 before the first."""
    samples = [(point.at.ToMilliseconds(), point.consumed) for point in points]
    values, index, last = [], 0, 0
    for at in times:
        while index < len(samples) and samples[index][0] <= at:
            last = samples[index][1]
            index += 1
        values.append(last)
    return values
