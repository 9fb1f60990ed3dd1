"""The three strategies operators run today, on the same demand as the distribution model.

- central: every order asks the center, across the WAN;
- preallocation: the budget split between regions up front by a forecast, never moved;
- local_async: regions deduct locally and exchange their counts with the center every second.
"""

from __future__ import annotations

import functools
from collections import defaultdict

from loadtest.simulation.engine import Metrics, Network, Simulation
from loadtest.simulation.scenarios import Order, Scenario
from quota_common.policy import Pacing

ANSWER_TIMEOUT_S = 2.0
SYNC_INTERVAL_S = 1.0


class Strategy:
    """Issues or refuses each order and records what it cost; subclasses decide how."""

    name = ""

    def __init__(self, sim: Simulation, net: Network, scenario: Scenario) -> None:
        self.sim, self.net, self.scenario = sim, net, scenario
        self.metrics = Metrics()
        promotions = len(scenario.budgets)
        self.issued = [0] * promotions
        self.refused = [0] * promotions
        self.ahead_of_curve = 0
        """The most issued beyond what a paced promotion had released at the time."""

    def start(self) -> None:
        """Called once before the first order."""

    def issued_by_promotion(self) -> list[int]:
        """What customers were actually given, per promotion."""
        return list(self.issued)

    def order(self, number: int, order: Order) -> None:
        raise NotImplementedError

    def answer(self, order: Order, arrived_s: float, issued: bool, waited: bool = False) -> None:
        self.metrics.answered(self.sim.now - arrived_s, order.amount if issued else 0, waited)
        if issued:
            self.issued[order.promotion] += order.amount
            if self.scenario.pacing is not Pacing.NONE:
                released = self.scenario.released(order.promotion, self.sim.now)
                self.ahead_of_curve = max(self.ahead_of_curve, self.issued[order.promotion] - released)
        else:
            self.refused[order.promotion] += order.amount


class Central(Strategy):
    name = "central"

    def start(self) -> None:
        self.remaining = list(self.scenario.budgets)

    def issued_by_promotion(self) -> list[int]:
        # The center's count: an order whose answer a partition lost was still deducted.
        return [budget - left for budget, left in zip(self.scenario.budgets, self.remaining, strict=True)]

    def order(self, number: int, order: Order) -> None:
        arrived, answered = self.sim.now, [False]
        self.metrics.center_calls += 1

        def reply(issued: bool) -> None:
            if not answered[0]:
                answered[0] = True
                self.answer(order, arrived, issued)

        def at_center() -> None:
            p = order.promotion
            released_left = self.scenario.released(p, self.sim.now) - (self.scenario.budgets[p] - self.remaining[p])
            issued = min(self.remaining[p], released_left) >= order.amount
            if issued:
                self.remaining[order.promotion] -= order.amount
            self.net.to_region(order.region, lambda: reply(issued))

        self.net.to_center(order.region, at_center)
        self.sim.after(ANSWER_TIMEOUT_S, lambda: reply(False))


class Preallocation(Strategy):
    name = "preallocation"

    def start(self) -> None:
        self.left: dict[tuple[int, int], int] = {}
        for promotion, (budget, shares) in enumerate(zip(self.scenario.budgets, self.scenario.forecast, strict=True)):
            split = {region: int(budget * share) for region, share in shares.items()}
            largest = max(shares, key=lambda region: shares[region])
            split[largest] += budget - sum(split.values())
            for region, amount in split.items():
                self.left[(region, promotion)] = amount

    def order(self, number: int, order: Order) -> None:
        arrived = self.sim.now
        key = (order.region, order.promotion)
        issued = self.left.get(key, 0) >= order.amount
        if issued:
            self.left[key] -= order.amount
        self.sim.after(self.net.in_region(), lambda: self.answer(order, arrived, issued))


class LocalAsync(Strategy):
    """Each region believes the budget has `budget - own - others_last_heard` left."""

    name = "local_async"

    def start(self) -> None:
        self.own: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.others_heard: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.center_totals: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for region in range(len(self.scenario.regions)):
            self.sim.after(
                SYNC_INTERVAL_S * (1 + region / len(self.scenario.regions)), functools.partial(self._sync, region)
            )

    def order(self, number: int, order: Order) -> None:
        arrived = self.sim.now
        own, others = self.own[order.region], self.others_heard[order.region]
        p = order.promotion
        issued = own[p] + others[p] + order.amount <= self.scenario.budgets[p]
        if issued:
            own[p] += order.amount
        self.sim.after(self.net.in_region(), lambda: self.answer(order, arrived, issued))

    def _sync(self, region: int) -> None:
        if self.sim.now <= self.scenario.duration_s:
            self.sim.after(SYNC_INTERVAL_S, lambda: self._sync(region))
        counts = dict(self.own[region])
        if not counts:
            return
        self.metrics.center_calls += 1

        def at_center() -> None:
            for p, count in counts.items():
                self.center_totals[p][region] = max(self.center_totals[p][region], count)
            others = {p: sum(n for r, n in self.center_totals[p].items() if r != region) for p in counts}
            self.net.to_region(region, lambda: self.others_heard[region].update(others))

        self.net.to_center(region, at_center)
