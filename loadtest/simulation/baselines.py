"""The three strategies operators run today, as models on the discrete-event loop, on the same demand and
network as the distribution model:

- central: every order asks the center, across the WAN;
- preallocation: the budget split between regions up front by a forecast, never moved;
- local_async: regions deduct locally and exchange their counts with the center every second.

They model no process crashes: a scenario with crashes is for the distribution model alone.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable

from loadtest.simulation.engine import SETUP_S, Network, Simulation, Tally
from loadtest.simulation.scenarios import Order, Scenario

ANSWER_TIMEOUT_S = 2.0
SYNC_INTERVAL_S = 1.0


class Strategy(Tally):
    """Issues or refuses each order and records what it cost; subclasses decide how."""

    def __init__(self, sim: Simulation, net: Network, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.sim, self.net = sim, net

    def start(self) -> None:
        """Called once before the first order."""

    def order(self, number: int, order: Order) -> None:
        raise NotImplementedError

    def answer(self, order: Order, arrived_s: float, issued: bool) -> None:
        self.record(order, self.sim.now - arrived_s, self.sim.now, issued)

    def send(self, region: int, deliver: Callable[[], None]) -> None:
        """A message between the region and the center: `deliver` runs on arrival, unless it is lost."""
        delay = self.net.one_way(region, self.sim.now)
        if delay is not None:
            self.sim.after(delay, deliver)


def run_model(strategy_type: type[Strategy], scenario: Scenario, net: Network) -> Tally:
    """The scenario's orders, each at its time, against the modelled strategy."""
    if scenario.crashes:
        raise ValueError(f"the {strategy_type.__name__} model has no processes to crash")
    sim = Simulation(start_s=-SETUP_S)
    strategy = strategy_type(sim, net, scenario)
    strategy.start()
    orders = scenario.orders

    def feed(number: int) -> None:
        strategy.order(number, orders[number])
        if number + 1 < len(orders):
            sim.at(orders[number + 1].time_s, lambda: feed(number + 1))

    if orders:
        sim.at(orders[0].time_s, lambda: feed(0))
    sim.run()
    return strategy


class Central(Strategy):
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
            self.send(order.region, lambda: reply(issued))

        self.send(order.region, at_center)
        self.sim.after(ANSWER_TIMEOUT_S, lambda: reply(False))


class Preallocation(Strategy):
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
            self.send(region, lambda: self.others_heard[region].update(others))

        self.send(region, at_center)
