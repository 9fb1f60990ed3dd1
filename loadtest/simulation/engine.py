"""What every strategy shares: the network between the regions and the center, the faults on it, and what
a run measures. The baselines also run on `Simulation`, a discrete-event loop; the distribution model runs
the servers' own asyncio code on a virtual-time loop instead (`distribution.py`)."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quota_common.policy import Pacing

if TYPE_CHECKING:
    from loadtest.simulation.scenarios import Order, Scenario

SETUP_S = 2.0
"""Strategies start this long before the first order: what can be prepared before a sale, is."""


class Simulation:
    """Events at virtual times (seconds); ties run in the order they were scheduled."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now = start_s
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._scheduled = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._scheduled += 1
        heapq.heappush(self._queue, (max(when, self.now), self._scheduled, action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def run(self) -> None:
        while self._queue:
            self.now, _, action = heapq.heappop(self._queue)
            action()


@dataclass(frozen=True)
class Partition:
    """The region cannot reach the center, nor the center it, over [start_s, end_s)."""

    region: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Crash:
    """The region's agent dies at `at_s` (with its in-process ledger) and a new one starts `down_s` later."""

    region: int
    at_s: float
    down_s: float


LATE_S = 5.0
"""How much later than the others a late message may arrive: past its caller's deadline and its retries."""


class Network:
    """One-way delays between each region and the center (half the round trip, plus up to `jitter` of it),
    from one seeded generator. A message is lost with probability `loss`, and always across a partitioned
    link; it arrives up to LATE_S later with probability `late`, so after messages sent after it."""

    def __init__(
        self,
        center_rtt_s: Sequence[float],
        in_region_rtt_s: float,
        jitter: float,
        rng: random.Random,
        partitions: Sequence[Partition] = (),
        loss: float = 0.0,
        late: float = 0.0,
    ) -> None:
        self.center_rtt_s = list(center_rtt_s)
        self.in_region_rtt_s = in_region_rtt_s
        self.jitter = jitter
        self.rng = rng
        self.partitions = list(partitions)
        """Open to additions while a run goes on (tests partition a region at a time of their choosing)."""
        self.loss = loss
        self.late = late

    def in_region(self) -> float:
        """The round trip from an order service to its region's agent."""
        return self.in_region_rtt_s * (1 + self.jitter * self.rng.random())

    def cut(self, region: int, now_s: float) -> bool:
        return any(p.region == region and p.start_s <= now_s < p.end_s for p in self.partitions)

    def one_way(self, region: int, now_s: float) -> float | None:
        """How long a message sent now between the region and the center travels; None: it is lost."""
        if self.cut(region, now_s) or (self.loss and self.rng.random() < self.loss):
            return None
        held_up = LATE_S * self.rng.random() if self.late and self.rng.random() < self.late else 0.0
        return self.center_rtt_s[region] / 2 * (1 + self.jitter * self.rng.random()) + held_up


@dataclass
class Metrics:
    """Answers to order services and calls to the center."""

    latencies_s: list[float] = field(default_factory=list)
    issued: int = 0
    waited: int = 0
    center_calls: int = 0
    renewal_entries: int = 0
    """Promotions reported in renewals that reached the center."""

    def answered(self, latency_s: float, issued: int = 0, waited: bool = False) -> None:
        self.latencies_s.append(latency_s)
        self.issued += issued
        self.waited += waited

    def quantile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 2)


class Tally:
    """What one strategy did with one scenario's demand."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.metrics = Metrics()
        promotions = len(scenario.budgets)
        self.issued = [0] * promotions
        self.refused = [0] * promotions
        self.ahead_of_curve = 0
        """The most issued beyond what a paced promotion had released at the time."""

    def issued_by_promotion(self) -> list[int]:
        """What customers were actually given, per promotion."""
        return list(self.issued)

    def record(self, order: Order, latency_s: float, now_s: float, issued: bool, waited: bool = False) -> None:
        """The order service got its answer at `now_s`, `latency_s` after it asked."""
        self.metrics.answered(latency_s, order.amount if issued else 0, waited)
        if not issued:
            self.refused[order.promotion] += order.amount
            return
        self.issued[order.promotion] += order.amount
        if self.scenario.pacing is not Pacing.NONE:
            released = self.scenario.released(order.promotion, now_s)
            self.ahead_of_curve = max(self.ahead_of_curve, self.issued[order.promotion] - released)
