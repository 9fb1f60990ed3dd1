"""The Locust suite end to end: a center and three agents as processes, loaded by a headless Locust in a
process of its own, with budgets small enough to run out within seconds.

Every kind of call must happen and none may fail (a refusal for a spent budget is a success), and what
the regions deducted, net of refunds and with what reservations still hold, must stay within budget.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quota_testing.launch import ServerProcess, agent_process, center_process
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("eu", "us", "ap")
PROMOTIONS = 3
BUDGET = 100
"""Per promotion: small, so even a busy machine's trickle of orders spends it well within the run."""
KINDS = ("Deduct", "Deduct multi-line", "Deduct retry", "Refund", "Reserve", "Confirm", "Cancel")


@dataclass(frozen=True)
class Stack:
    center: str
    agents: dict[str, str]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    processes: list[ServerProcess] = []
    try:
        center = center_process(tmp_path).start()
        processes.append(center)
        for region in REGIONS:
            processes.append(agent_process(tmp_path, region, center.address).start())
        yield Stack(center.address, {region: p.address for region, p in zip(REGIONS, processes[1:], strict=True)})
    finally:
        for process in reversed(processes):
            process.kill()


def _run_locust(stack: Stack, csv_prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "--users=12",
            "--spawn-rate=12",
            "--run-time=12s",
            f"--agents={','.join(f'{region}={address}' for region, address in stack.agents.items())}",
            f"--center={stack.center}",
            f"--promotions={PROMOTIONS}",
            f"--budget={BUDGET}",
            f"--csv={csv_prefix}",
            "--only-summary",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _balances(stack: Stack) -> list[agent_pb.PromotionBalance]:
    balances: list[agent_pb.PromotionBalance] = []
    for address in stack.agents.values():
        with grpc.insecure_channel(address) as channel:
            status = agent_grpc.RegionAgentStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=5)
        balances.extend(status.balances)
    return balances


def test_every_call_kind_runs_without_failures_and_within_budget(stack: Stack, tmp_path: Path) -> None:
    run = _run_locust(stack, tmp_path / "locust")
    # Locust exits 1 on any failure; its summary on stderr ends with the failures by kind.
    assert run.returncode == 0, f"locust exited {run.returncode}:\n{run.stderr[-4000:]}"
    assert _rows(tmp_path / "locust_failures.csv") == []
    requests = {row["Name"]: int(row["Request Count"]) for row in _rows(tmp_path / "locust_stats.csv")}
    for kind in KINDS:
        assert requests.get(kind, 0) > 0, f"no {kind} calls: {requests}"
    exhausted = sum(count for name, count in requests.items() if name.endswith("(exhausted)"))
    assert exhausted > 0, f"the budgets never ran out: {requests}"

    balances = _balances(stack)
    for balance in balances:
        # The ledger's own arithmetic: every unit granted is available, held, or net deducted.
        spent = balance.deducted - balance.refunded
        assert balance.available + balance.held + spent == balance.granted - balance.returned, balance
    promotion_ids = {balance.promotion_id for balance in balances}
    assert len(promotion_ids) == PROMOTIONS, promotion_ids
    for promotion_id in promotion_ids:
        mine = [balance for balance in balances if balance.promotion_id == promotion_id]
        spent = sum(b.deducted - b.refunded + b.held for b in mine)
        assert 0 < spent <= BUDGET, f"{promotion_id}: {spent} of {BUDGET} deducted, refunded and held: {mine}"
