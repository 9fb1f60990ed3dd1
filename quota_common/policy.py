"""Allocation policy: numbers in, numbers out. No I/O, no clock, no state.

The center sizes grants and reclaims here; agents size their asks and low-water marks
here too, so the simulator, the servers and the tests all run the same arithmetic.

Agent side (after CockroachDB's distributed token bucket):

    ask        = max(rate * horizon + buffer - available, needed - available, 1)
    low_water  = max(fraction * last_grant, buffer (once granted that much), rate * latency * 2)

Center side (after Doorman's proportional share): a grant never exceeds what is
unallocated. While unallocated covers every region's demand for two horizons, or no other
region has demand, a region gets what it asks. Below that the budget is contested: a region gets at most half of its
demand-proportional share of what is left, so grants shrink as the budget runs low, the
last units go out in small pieces, and they follow demand instead of whoever asked first.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from quota_common.validation import MAX_AMOUNT

HOUR_MS = 3_600_000


class Pacing(enum.Enum):
    """How a promotion's budget is released over its window."""

    NONE = "NONE"
    """All of it from the start."""
    LINEAR = "LINEAR"
    """In proportion to the time elapsed in the window."""
    HOURLY_CAP = "HOURLY_CAP"
    """At most `hourly_cap` per hour started, cumulatively (what one hour leaves, the next may use)."""


def released_amount(budget: int, start_ms: int, end_ms: int, now_ms: int, pacing: Pacing, hourly_cap: int = 0) -> int:
    """How much of the budget the center may have granted by `now_ms`; never more than the budget,
    never less as time goes on."""
    if pacing is Pacing.NONE:
        return budget
    elapsed = min(max(now_ms - start_ms, 0), end_ms - start_ms)
    if pacing is Pacing.LINEAR:
        return budget * elapsed // (end_ms - start_ms)
    return min(budget, hourly_cap * (elapsed // HOUR_MS + 1))


@dataclass(frozen=True)
class RefillSettings:
    horizon_s: float = 2.0
    """Seconds of demand a region keeps on hand after a refill."""
    buffer: int = 20
    """Units kept beyond the rate estimate, so a quiet region can still serve a burst."""
    low_water_fraction: float = 0.25
    """Refill when less than this fraction of the last grant is left."""


def demand_per_minute(rate_per_s: float) -> int:
    """Capped where every counter is: a burst of huge orders must not make a report the center refuses."""
    return _capped(rate_per_s * 60)


def ask_amount(settings: RefillSettings, available: int, rate_per_s: float, needed: int = 0) -> int:
    """How much to ask the center for, given what is left and the measured rate; never beyond
    what an acquire may ask."""
    target = _capped(rate_per_s * settings.horizon_s) + settings.buffer
    return min(max(target - available, needed - available, 1), MAX_AMOUNT)


def _capped(units: float) -> int:
    return min(math.ceil(units), MAX_AMOUNT)


def opening_amount(settings: RefillSettings, budget: int, regions: int, opening_fraction: float = 0.1) -> int:
    """A region's allotment before a sale opens, when no rate is measured yet: a tenth of its even
    share of the budget, at least the buffer, never more than the even share."""
    even = -(-budget // max(1, regions))
    return min(even, max(settings.buffer, math.ceil(budget * opening_fraction / max(1, regions))))


def low_water_mark(settings: RefillSettings, last_grant: int, rate_per_s: float, latency_s: float) -> int:
    """Below this much available, refill now so the grant lands before the allotment is empty.

    The buffer counts only after a grant larger than the buffer: a grant of the buffer or less is an
    opening allotment or a small budget's share, and refilling it on its first order would only churn
    quota between regions (and, at a sale's opening, send every promotion's refill at once)."""
    return max(
        math.ceil(settings.low_water_fraction * last_grant),
        settings.buffer if last_grant > settings.buffer else 0,
        _capped(rate_per_s * latency_s * 2),
    )


def surely_above_low_water(
    settings: RefillSettings, available: int, last_grant: int, rate_per_s: float, latency_s: float
) -> bool:
    """True only when `available` is at or above `low_water_mark` for these, told with no rounding or
    capping: a whole number at or above a term is at or above the term rounded up. Asked on every order."""
    return (
        available >= settings.low_water_fraction * last_grant
        and available >= (settings.buffer if last_grant > settings.buffer else 0)
        and available >= rate_per_s * latency_s * 2
    )


def _contested(unallocated: int, total_demand_per_minute: int, horizon_s: float) -> bool:
    return unallocated < 2 * math.ceil(total_demand_per_minute * horizon_s / 60)


def grant_amount(
    asked: int,
    unallocated: int,
    demand_per_minute: int,
    total_demand_per_minute: int,
    horizon_s: float,
) -> int:
    """The grant for one acquire; 0 only when nothing is unallocated.

    `total_demand_per_minute` is every region's demand, the asking region's included.
    """
    if unallocated <= 0 or asked <= 0:
        return 0
    others = total_demand_per_minute - demand_per_minute
    if others <= 0 or not _contested(unallocated, total_demand_per_minute, horizon_s):
        # Nobody else wants any: holding quota back would only make this region wait.
        return min(asked, unallocated)
    # Contested implies some demand. A region with none measured yet weighs as one unit a
    # minute: never more than a busy one.
    weight = max(demand_per_minute, 1)
    share = unallocated * weight // (others + weight)
    return max(1, min(asked, share // 2, unallocated))


def reclaim_amount(
    held: int,
    demand_per_minute: int,
    others_demand_per_minute: int,
    unallocated: int,
    horizon_s: float,
) -> int:
    """What to ask a region to give back: its stock beyond two horizons of its own demand, and no
    more than other regions lack (what they want over a horizon beyond what the center has left),
    so a promotion with budget to spare is not shuffled between regions."""
    lacking = math.ceil(others_demand_per_minute * horizon_s / 60) - unallocated
    if lacking <= 0:
        return 0
    keep = 2 * math.ceil(demand_per_minute * horizon_s / 60)
    return max(0, min(held - keep, lacking))
