"""The demand every strategy faces: orders at virtual times, generated once per scenario from a seed.

Default geography: three regions, the center near the first (10 ms round trip), the others 80 ms
and 160 ms away; an order service reaches its own region's agent in 1 ms. Faults (partitions, lost
messages, agent crashes) come with the scenario, so a seed replays them too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from loadtest.simulation.engine import Crash, Partition
from quota_common.policy import Pacing, released_amount

REGIONS = ("eu", "us", "ap")
CENTER_RTT_S = [0.010, 0.080, 0.160]
SKEWED = (0.7, 0.2, 0.1)
EVEN = (1 / 3, 1 / 3, 1 / 3)


@dataclass(frozen=True)
class Order:
    time_s: float
    region: int
    promotion: int
    amount: int = 1


@dataclass(frozen=True)
class Scenario:
    name: str
    regions: tuple[str, ...]
    center_rtt_s: list[float]
    budgets: list[int]
    """Per promotion."""
    allowed: list[tuple[int, ...]]
    """Per promotion, the regions that may spend it."""
    orders: list[Order]
    forecast: list[dict[int, float]]
    """Per promotion, the share of its budget static pre-allocation gives each region."""
    partitions: tuple[Partition, ...] = ()
    pacing: Pacing = Pacing.NONE
    """Every promotion's release curve, over its window [0, window_s)."""
    window_s: float = 0.0
    """How long the promotions run, with pacing; 0: longer than any scenario."""
    loss: float = 0.0
    """The share of messages between a region and the center lost on the way."""
    late: float = 0.0
    """The share of them held up on the way (engine.LATE_S), so they arrive after later ones."""
    crashes: tuple[Crash, ...] = ()

    def released(self, promotion: int, now_s: float) -> int:
        budget = self.budgets[promotion]
        return released_amount(budget, 0, max(1, round(self.window_s * 1000)), round(now_s * 1000), self.pacing)

    @property
    def demand(self) -> int:
        return sum(order.amount for order in self.orders)

    @property
    def duration_s(self) -> float:
        return self.orders[-1].time_s if self.orders else 0.0


def _poisson(rng: random.Random, count: int, rate_at: Callable[[float], float], peak: float) -> list[float]:
    """`count` arrival times of a Poisson process with rate `rate_at(t)` (thinning under `peak`)."""
    times: list[float] = []
    now = 0.0
    while len(times) < count:
        now += rng.expovariate(peak)
        if rng.random() * peak <= rate_at(now):
            times.append(now)
    return times


def _pick(rng: random.Random, shares: tuple[float, ...]) -> int:
    return rng.choices(range(len(shares)), weights=shares)[0]


def _one_promotion(
    name: str,
    rng: random.Random,
    budget: int,
    demand: int,
    rate_at: Callable[[float], float],
    peak: float,
    shares_at: Callable[[float], tuple[float, ...]],
    forecast: tuple[float, ...],
    size: float,
    partitions: tuple[Partition, ...] = (),
) -> Scenario:
    """`size` scales the budget, the demand and its rate, not the durations."""
    budget, demand = round(budget * size), round(demand * size)
    times = _poisson(rng, demand, lambda t: rate_at(t) * size, peak * size)
    orders = [Order(t, _pick(rng, shares_at(t)), 0) for t in times]
    return Scenario(
        name,
        REGIONS,
        CENTER_RTT_S,
        [budget],
        [tuple(range(len(REGIONS)))],
        orders,
        [dict(enumerate(forecast))],
        partitions,
    )


BUDGET = 50_000
DEMAND = 60_000
RATE = 1_000.0
"""Orders per second across the regions: a modest flash sale."""


def uniform(rng: random.Random, size: float = 1.0) -> Scenario:
    return _one_promotion("uniform", rng, BUDGET, DEMAND, lambda t: RATE, RATE, lambda t: EVEN, EVEN, size)


def skewed(rng: random.Random, size: float = 1.0) -> Scenario:
    return _one_promotion("skewed", rng, BUDGET, DEMAND, lambda t: RATE, RATE, lambda t: SKEWED, SKEWED, size)


def moving_hotspot(rng: random.Random, size: float = 1.0) -> Scenario:
    """70/20/10 for thirty seconds, then 10/20/70; pre-allocation forecasts the first half."""

    def shares(t: float) -> tuple[float, ...]:
        return SKEWED if t < 30 else SKEWED[::-1]

    return _one_promotion("moving_hotspot", rng, BUDGET, DEMAND, lambda t: RATE, RATE, shares, SKEWED, size)


def midnight_burst(rng: random.Random, size: float = 1.0) -> Scenario:
    """Ten times the steady rate for the first four seconds: most of the budget goes at the start."""

    def rate(t: float) -> float:
        return 10 * RATE if t < 4 else RATE

    return _one_promotion("midnight_burst", rng, BUDGET, DEMAND, rate, 10 * RATE, lambda t: SKEWED, SKEWED, size)


def partition(rng: random.Random, size: float = 1.0) -> Scenario:
    """Region us cannot reach the center from minute one to minute six of a ten-minute sale."""
    cut = (Partition(region=1, start_s=60.0, end_s=360.0),)
    return _one_promotion("partition", rng, 20_000, 26_000, lambda t: 45.0, 45.0, lambda t: EVEN, EVEN, size, cut)


def paced(rng: random.Random, size: float = 1.0) -> Scenario:
    """The midnight burst again, but the budget is released linearly over the promotion's thirty seconds
    (the sale's orders end at about 24 s): the burst may not take more than the curve has released. A
    promotion's pacing window is its window of validity, so it covers the whole sale."""
    burst = midnight_burst(rng, size)
    return Scenario(
        "paced", burst.regions, burst.center_rtt_s, burst.budgets, burst.allowed, burst.orders, burst.forecast,
        pacing=Pacing.LINEAR, window_s=30.0,
    )  # fmt: skip


def low_demand(rng: random.Random, size: float = 1.0) -> Scenario:
    half = DEMAND // 2
    return _one_promotion("low_demand", rng, BUDGET, half, lambda t: RATE, RATE, lambda t: SKEWED, SKEWED, size)


def scale(rng: random.Random, size: float = 1.0, regions: int = 50) -> Scenario:
    """Many regions, many promotions: each promotion runs in three regions and popularity is Zipf-like.
    The hundred most popular sell out (budget five sixths of expected demand); the long tail has
    budget to spare (ten times its expected demand), as most promotions do. `size` scales the
    promotions, the demand and its rate."""
    promotions, demand, rate = round(10_000 * size), round(80_000 * size), 2_000.0 * size
    names = tuple(f"r{n:02d}" for n in range(regions))
    rtt = [rng.uniform(0.010, 0.200) for _ in names]
    allowed = [tuple(rng.sample(range(regions), 3)) for _ in range(promotions)]
    popularity = [1 / (rank + 10) for rank in range(promotions)]
    total = sum(popularity)
    sells_out = [5 / 6 if rank < round(100 * size) else 10.0 for rank in range(promotions)]
    budgets = [
        max(1, round(demand * weight / total * factor)) for weight, factor in zip(popularity, sells_out, strict=True)
    ]
    times = _poisson(rng, demand, lambda t: rate, rate)
    chosen = rng.choices(range(promotions), weights=popularity, k=demand)
    orders = [Order(t, rng.choice(allowed[p]), p) for t, p in zip(times, chosen, strict=True)]
    forecast = [dict.fromkeys(regions_of, 1 / 3) for regions_of in allowed]
    return Scenario("scale", names, rtt, budgets, allowed, orders, forecast)


class Builder(Protocol):
    def __call__(self, rng: random.Random, size: float = 1.0) -> Scenario:
        """The scenario's demand drawn from `rng`; `size` scales its budgets and demand (tests run small ones)."""
        ...


SCENARIOS: dict[str, Builder] = {
    "uniform": uniform,
    "skewed": skewed,
    "moving_hotspot": moving_hotspot,
    "midnight_burst": midnight_burst,
    "partition": partition,
    "paced": paced,
    "low_demand": low_demand,
    "scale": scale,
}
