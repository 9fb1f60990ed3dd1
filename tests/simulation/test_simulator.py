"""The simulator itself: deterministic for a seed, and the distribution model's center books
exactly what its ledgers hold."""

from __future__ import annotations

import functools
import random

from loadtest.simulation.distribution import LEASE_TTL_S, Distribution
from loadtest.simulation.engine import Network, Partition, Simulation
from loadtest.simulation.run import SETUP_S, simulate, simulate_all
from loadtest.simulation.scenarios import Order, Scenario, skewed


def test_a_seed_replays_the_same_figures() -> None:
    once = simulate_all(3, ["low_demand"], ["distribution"])
    assert once == simulate_all(3, ["low_demand"], ["distribution"])
    assert once != simulate_all(4, ["low_demand"], ["distribution"])


def test_the_center_never_books_more_than_a_budget_and_regions_never_spend_more_than_granted() -> None:
    scenario = skewed(random.Random(1))
    sim = Simulation(start_s=-2.0)
    strategy = Distribution(sim, Network(sim, scenario.center_rtt_s, 0.001, 0.5, random.Random(1)), scenario)
    strategy.start()
    for number, order in enumerate(scenario.orders[:20_000]):
        sim.at(order.time_s, functools.partial(strategy.order, number, order))
    sim.run()

    assert strategy.over_granted() == 0
    for ledger in strategy.ledgers:
        balance = ledger.balance("0")
        assert 0 <= balance.deducted <= balance.granted - balance.returned


def test_a_partitioned_region_spends_its_allotment_only_while_its_lease_lasts() -> None:
    base = skewed(random.Random(1))
    orders = [Order(t / 10, 1, 0) for t in range(1, 300)]

    def run(partition: Partition | None) -> int:
        scenario = Scenario(
            "cut", base.regions, base.center_rtt_s, [10_000], [(0, 1, 2)], orders, [{0: 1.0}], partition
        )
        issued: int = simulate(scenario, Distribution, 1)["issued"]
        return issued

    # The opening allotment and lease arrive before the sale (SETUP_S earlier); then the link is cut.
    lease_ends_s = LEASE_TTL_S - SETUP_S
    assert run(None) == len(orders)
    assert run(Partition(1, 0.0, 60.0)) == sum(1 for order in orders if order.time_s < lease_ends_s)
