"""Runs every strategy on every scenario's demand and reports the figures `quota simulate` prints."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from loadtest.simulation.baselines import Central, LocalAsync, Preallocation, Strategy
from loadtest.simulation.distribution import Distribution
from loadtest.simulation.engine import Network, Simulation
from loadtest.simulation.scenarios import SCENARIOS, Scenario

STRATEGIES: dict[str, type[Strategy]] = {
    "central": Central,
    "preallocation": Preallocation,
    "local_async": LocalAsync,
    "distribution": Distribution,
}
IN_REGION_RTT_S = 0.001
SETUP_S = 2.0
"""Strategies start this long before the first order: what can be prepared before a sale, is."""
JITTER = 0.5


def simulate(scenario: Scenario, strategy_type: type[Strategy], seed: int) -> dict[str, Any]:
    sim = Simulation(start_s=-SETUP_S)
    net = Network(sim, scenario.center_rtt_s, IN_REGION_RTT_S, JITTER, random.Random(seed), scenario.partition)
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
    return _row(scenario, strategy)


def _row(scenario: Scenario, strategy: Strategy) -> dict[str, Any]:
    issued = strategy.issued_by_promotion()
    budget, demand, metrics = sum(scenario.budgets), scenario.demand, strategy.metrics
    answered = len(metrics.latencies_s)
    return {
        "scenario": scenario.name,
        "strategy": strategy.name,
        "budget": budget,
        "demand": demand,
        "issued": sum(issued),
        "over_issue": sum(max(0, n - b) for n, b in zip(issued, scenario.budgets, strict=True)),
        # Quota left unissued that refused orders could have taken.
        "stranded": sum(
            min(refused, max(0, b - n))
            for n, b, refused in zip(issued, scenario.budgets, strategy.refused, strict=True)
        ),
        "sell_through": round(sum(issued) / budget, 5),
        "p50_ms": metrics.quantile_ms(0.50),
        "p99_ms": metrics.quantile_ms(0.99),
        "p999_ms": metrics.quantile_ms(0.999),
        "center_calls_per_1k": round(metrics.center_calls * 1000 / max(1, answered), 2),
        "waited_share": round(metrics.waited / max(1, answered), 5),
        "pacing_deviation": strategy.ahead_of_curve,
    }


def simulate_all(
    seed: int = 7, scenarios: Iterable[str] = SCENARIOS, strategies: Iterable[str] = STRATEGIES
) -> list[dict[str, Any]]:
    """Every (scenario, strategy) pair, one per core at a time; each is seeded, so the figures do
    not depend on how many run at once."""
    jobs = [(seed, scenario, strategy) for scenario in scenarios for strategy in strategies]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [_job(*job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_job, *zip(*jobs, strict=True)))


def _job(seed: int, scenario: str, strategy: str) -> dict[str, Any]:
    return simulate(SCENARIOS[scenario](random.Random(seed)), STRATEGIES[strategy], seed)
