"""Allocation policy: numbers in, numbers out. No I/O, no clock, no state.

The center sizes grants and reclaims here; agents size their asks and low-water marks
here too, so the simulator, the servers and the tests all run the same arithmetic.

Agent side (after CockroachDB's distributed token bucket):

    ask        = max(rate * horizon + buffer - available, needed - available, 1)
    low_water  = max(fraction * last_grant, buffer, rate * latency * 2)

Center side (after Doorman's proportional share): a grant never exceeds what is
unallocated. While unallocated covers every region's demand for two horizons, a region
gets what it asks. Below that the budget is contested: a region gets at most half of its
demand-proportional share of what is left, so grants shrink as the budget runs low, the
last units go out in small pieces, and they follow demand instead of whoever asked first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RefillSettings:
    horizon_s: float = 2.0
    """Seconds of demand a region keeps on hand after a refill."""
    buffer: int = 20
    """Units kept beyond the rate estimate, so a quiet region can still serve a burst."""
    low_water_fraction: float = 0.25
    """Refill when less than this fraction of the last grant is left."""


def demand_per_minute(rate_per_s: float) -> int:
    return math.ceil(rate_per_s * 60)


def ask_amount(settings: RefillSettings, available: int, rate_per_s: float, needed: int = 0) -> int:
    """How much to ask the center for, given what is left and the measured rate."""
    target = math.ceil(rate_per_s * settings.horizon_s) + settings.buffer
    return max(target - available, needed - available, 1)


def low_water_mark(settings: RefillSettings, last_grant: int, rate_per_s: float, latency_s: float) -> int:
    """Below this much available, refill now so the grant lands before the allotment is empty."""
    return max(
        math.ceil(settings.low_water_fraction * last_grant),
        settings.buffer,
        math.ceil(rate_per_s * latency_s * 2),
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
    if not _contested(unallocated, total_demand_per_minute, horizon_s):
        return min(asked, unallocated)
    # Contested implies some demand. A region with none measured yet weighs as one unit a
    # minute: never more than a busy one.
    weight = max(demand_per_minute, 1)
    share = unallocated * weight // (total_demand_per_minute - demand_per_minute + weight)
    return max(1, min(asked, share // 2, unallocated))


def reclaim_amount(
    held: int,
    demand_per_minute: int,
    others_demand_per_minute: int,
    unallocated: int,
    horizon_s: float,
) -> int:
    """What to ask a region to give back: its stock beyond two horizons of its own demand,
    but only while other regions want more than the center has left."""
    others_want = math.ceil(others_demand_per_minute * horizon_s / 60)
    if others_want <= unallocated:
        return 0
    keep = 2 * math.ceil(demand_per_minute * horizon_s / 60)
    return max(0, held - keep)
