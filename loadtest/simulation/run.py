"""Runs every strategy on every scenario's demand and reports the figures `quota simulate` prints."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from loadtest.simulation.baselines import Central, LocalAsync, Preallocation, run_model
from loadtest.simulation.distribution import run_distribution
from loadtest.simulation.engine import Network, Tally
from loadtest.simulation.scenarios import SCENARIOS, Scenario


def _modelled(strategy: Callable[[Scenario, Network], Tally]) -> Callable[[Scenario, Network, int], Tally]:
    return lambda scenario, net, seed: strategy(scenario, net)


STRATEGIES: dict[str, Callable[[Scenario, Network, int], Tally]] = {
    "central": _modelled(functools.partial(run_model, Central)),
    "preallocation": _modelled(functools.partial(run_model, Preallocation)),
    "local_async": _modelled(functools.partial(run_model, LocalAsync)),
    "distribution": run_distribution,
}
"""Each runs a scenario on a network, from a seed."""
IN_REGION_RTT_S = 0.001
JITTER = 0.5


def simulate(scenario: Scenario, strategy: str, seed: int) -> dict[str, Any]:
    return _row(scenario, strategy, STRATEGIES[strategy](scenario, network_for(scenario, seed), seed))


def network_for(scenario: Scenario, seed: int) -> Network:
    """The scenario's network, its faults included, drawing from a generator seeded with `seed`."""
    rng = random.Random(seed)
    return Network(
        scenario.center_rtt_s, IN_REGION_RTT_S, JITTER, rng, scenario.partitions, scenario.loss, scenario.late
    )


def _row(scenario: Scenario, strategy: str, tally: Tally) -> dict[str, Any]:
    issued = tally.issued_by_promotion()
    budget, demand, metrics = sum(scenario.budgets), scenario.demand, tally.metrics
    answered = len(metrics.latencies_s)
    return {
        "scenario": scenario.name,
        "strategy": strategy,
        "budget": budget,
        "demand": demand,
        "issued": sum(issued),
        "over_issue": sum(max(0, n - b) for n, b in zip(issued, scenario.budgets, strict=True)),
        # Quota left unissued that refused orders could have taken.
        "stranded": sum(
            min(refused, max(0, b - n)) for n, b, refused in zip(issued, scenario.budgets, tally.refused, strict=True)
        ),
        "sell_through": round(sum(issued) / budget, 5),
        "p50_ms": metrics.quantile_ms(0.50),
        "p99_ms": metrics.quantile_ms(0.99),
        "p999_ms": metrics.quantile_ms(0.999),
        "center_calls_per_1k": round(metrics.center_calls * 1000 / max(1, answered), 2),
        "renewal_entries_per_1k": round(metrics.renewal_entries * 1000 / max(1, answered), 2),
        "waited_share": round(metrics.waited / max(1, answered), 5),
        "pacing_deviation": tally.ahead_of_curve,
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
    return simulate(SCENARIOS[scenario](random.Random(seed)), strategy, seed)
