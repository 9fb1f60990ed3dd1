"""The event loop, the network between regions and the center, and what a run measures."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


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
    region: int
    start_s: float
    end_s: float


@dataclass
class Network:
    """One-way delays between each region and the center: half the round trip, plus jitter.
    A message sent across a partitioned link is lost."""

    sim: Simulation
    center_rtt_s: list[float]
    in_region_rtt_s: float
    jitter: float
    rng: random.Random
    partition: Partition | None = None

    def in_region(self) -> float:
        """The round trip from an order service to its region's agent."""
        return self.in_region_rtt_s * (1 + self.jitter * self.rng.random())

    def cut(self, region: int) -> bool:
        p = self.partition
        return p is not None and p.region == region and p.start_s <= self.sim.now < p.end_s

    def to_center(self, region: int, deliver: Callable[[], None]) -> None:
        self._send(region, deliver)

    def to_region(self, region: int, deliver: Callable[[], None]) -> None:
        self._send(region, deliver)

    def _send(self, region: int, deliver: Callable[[], None]) -> None:
        if self.cut(region):
            return
        one_way = self.center_rtt_s[region] / 2 * (1 + self.jitter * self.rng.random())
        self.sim.after(one_way, deliver)


@dataclass
class Metrics:
    """What one strategy did with one scenario's demand."""

    latencies_s: list[float] = field(default_factory=list)
    issued: int = 0
    waited: int = 0
    center_calls: int = 0

    def answered(self, latency_s: float, issued: int = 0, waited: bool = False) -> None:
        self.latencies_s.append(latency_s)
        self.issued += issued
        self.waited += waited

    def quantile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 2)
