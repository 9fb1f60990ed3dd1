"""The simulator drives the servers' own code: the same seed gives the same figures, every invariant holds
under crashes, partitions and lost messages, a change in the center's rules moves the figures, and it
still sees how the strategies it replaces fail. Scenarios run at a twentieth of their size here; `quota
simulate` runs them whole (docs/strategies.md)."""

from __future__ import annotations

import dataclasses
import inspect
import random
from typing import Any

import pytest

from loadtest.simulation import network
from loadtest.simulation.distribution import simulate_world
from loadtest.simulation.engine import SETUP_S, Crash, Partition, Tally
from loadtest.simulation.invariants import InvariantBroken
from loadtest.simulation.run import STRATEGIES, network_for, simulate
from loadtest.simulation.scenarios import SCENARIOS, Order, Scenario, partition, skewed
from loadtest.simulation.world import World
from quota_center import allocation
from quota_center.center_core import CenterSettings
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.local import LocalLedger

SMALL = 0.05
Rows = dict[tuple[str, str], dict[str, Any]]
STEADY = ("uniform", "skewed", "moving_hotspot", "midnight_burst", "low_demand")


@pytest.fixture(scope="module")
def rows() -> Rows:
    return {
        (name, strategy): simulate(build(random.Random(7), SMALL), strategy, 7)
        for name, build in SCENARIOS.items()
        for strategy in STRATEGIES
    }


def faulty(seed: int = 1) -> Scenario:
    """Skewed demand while agents crash, a region is cut off, and messages are lost or arrive late. A crashed
    agent comes back once its lease ran out (an in-process ledger's restart waits for it): the busiest region,
    out for a lease, would leave the budget unsold (demand is 1.2 budgets), so the smaller ones crash."""
    return dataclasses.replace(
        skewed(random.Random(seed), 0.1),
        partitions=(Partition(1, 15.0, 30.0),),
        crashes=(Crash(2, 10.0, 2.0), Crash(2, 30.0, 0.5), Crash(1, 40.0, 1.0)),
        loss=0.05,
        late=0.02,
    )


def run_world(scenario: Scenario, seed: int = 1) -> tuple[Tally, World]:
    return simulate_world(scenario, network_for(scenario, seed), seed)


def test_a_seed_replays_the_same_figures() -> None:
    once = simulate(faulty(), "distribution", 3)
    assert once == simulate(faulty(), "distribution", 3)
    assert once != simulate(faulty(), "distribution", 4)


def test_a_crash_a_partition_and_lost_messages_keep_every_invariant() -> None:
    """The run judges the invariants every few seconds and at its end, and raises if one breaks."""
    scenario = faulty()
    tally, world = run_world(scenario)

    usage = world.center.usage("0")
    eu, us, ap = (next(v.account for v in usage.regions if v.region == r) for r in scenario.regions)
    written_off = eu.written_off + us.written_off + ap.written_off
    assert usage.unallocated == 0
    # Sold out, but for what the dead ledgers held unspent (written off with what they spent unreported).
    assert sum(scenario.budgets) - written_off <= sum(tally.issued) < sum(scenario.budgets)
    assert len(world.regions[2].lives) == 3
    assert len(ap.retired_incarnations) == 2, "each restart is a new incarnation; the center retired the old"
    assert ap.written_off > 0, "the crashed ledgers held quota: written off, never granted again"
    assert len(us.retired_incarnations) == 1
    assert eu.retired_incarnations == []


def test_a_ledger_that_applies_a_grant_twice_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariants are not vacuous: a planted bug in the regional ledger (grant ids forgotten, so a grant
    resent with a renewal is applied again) breaks the run."""
    apply_grant = LocalLedger.apply_grant

    def forgetful(self: LocalLedger, grant_id: str, promotion_id: str, amount: int) -> bool:
        return apply_grant(self, f"{grant_id}-{random.random()}", promotion_id, amount)

    monkeypatch.setattr(LocalLedger, "apply_grant", forgetful)
    with pytest.raises(InvariantBroken, match="applied twice"):
        run_world(faulty())


def test_a_planted_change_in_the_centers_reclaim_rule_moves_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = partition(random.Random(7), SMALL)
    honest = simulate(scenario, "distribution", 7)

    monkeypatch.setattr(allocation, "reclaim", lambda state, region, demands, horizon_s, now_ms: 0)
    planted = simulate(scenario, "distribution", 7)

    assert planted["over_issue"] == honest["over_issue"] == 0
    assert planted["center_calls_per_1k"] < honest["center_calls_per_1k"], "no returns without reclaims"
    assert planted != honest


def test_a_partitioned_region_spends_its_allotment_only_while_its_lease_lasts() -> None:
    base = skewed(random.Random(1))
    orders = [Order(t / 10, 1, 0) for t in range(1, 300)]

    def issued(partitions: tuple[Partition, ...]) -> int:
        scenario = Scenario("cut", base.regions, base.center_rtt_s, [10_000], [(0, 1, 2)], orders, [{0: 1.0}])
        count: int = simulate(dataclasses.replace(scenario, partitions=partitions), "distribution", 1)["issued"]
        return count

    # The lease runs from when the opening allotment was asked for, before the sale; then the link is cut.
    lease_s = CenterSettings().lease_ttl_s
    assert issued(()) == len(orders)
    cut = issued((Partition(1, 0.0, 60.0),))
    assert sum(o.time_s < lease_s - SETUP_S for o in orders) <= cut <= sum(o.time_s < lease_s for o in orders)


def test_the_network_retries_as_the_grpc_adapter_does() -> None:
    defaults = inspect.signature(GrpcCenter.__init__).parameters
    assert defaults["call_timeout_s"].default == network.CALL_TIMEOUT_S
    assert defaults["attempts"].default == network.ATTEMPTS
    assert defaults["budget_s"].default == network.RETRY_BUDGET_S


def test_the_distribution_model_never_over_issues_and_sells_out(rows: Rows) -> None:
    for (scenario, strategy), row in rows.items():
        if strategy != "distribution":
            continue
        assert row["over_issue"] == 0, scenario
        if scenario not in ("paced", "scale"):  # pacing refuses the burst; the scale's long tail has to spare
            assert row["issued"] == min(row["budget"], row["demand"]), scenario


def test_the_distribution_model_answers_at_in_region_latency(rows: Rows) -> None:
    for scenario in (*STEADY, "scale"):
        in_region = rows[(scenario, "preallocation")]["p99_ms"]  # never leaves the region
        assert rows[(scenario, "distribution")]["p99_ms"] <= 2 * in_region, scenario


def test_local_deduction_with_async_reports_over_issues_under_skew_and_bursts(rows: Rows) -> None:
    assert rows[("skewed", "local_async")]["over_issue"] > 0
    assert rows[("midnight_burst", "local_async")]["over_issue"] > 0


def test_pre_allocation_strands_quota_when_demand_moves(rows: Rows) -> None:
    moved = rows[("moving_hotspot", "preallocation")]
    assert moved["stranded"] > 0.05 * moved["budget"]
    assert moved["sell_through"] < 0.95


def test_central_deduction_pays_the_round_trip_on_every_order(rows: Rows) -> None:
    for (scenario, strategy), row in rows.items():
        if strategy == "central":
            assert row["center_calls_per_1k"] >= 999, scenario
            assert row["p50_ms"] > 5 * rows[(scenario, "preallocation")]["p50_ms"], scenario


def test_only_strategies_with_a_center_keep_to_a_release_curve(rows: Rows) -> None:
    assert rows[("paced", "distribution")]["pacing_deviation"] == 0
    assert rows[("paced", "distribution")]["over_issue"] == 0
    assert rows[("paced", "central")]["pacing_deviation"] == 0
    for burning in ("preallocation", "local_async"):
        assert rows[("paced", burning)]["pacing_deviation"] > 0.25 * rows[("paced", burning)]["budget"]
