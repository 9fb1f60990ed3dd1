"""`quota chaos` for a minute on each stack: under every fault of a seeded schedule the whole history judges
clean, every scheduled fault kind was injected, and the load both succeeded and was refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.chaos.history import History, Status

pytestmark = pytest.mark.e2e

ADMIN_FAULTS = {"freeze", "emergency", "budget"}
STACK_FAULTS = {
    "embedded": {"kill-leader", "stop-leader"},
    "redis-etcd": {
        "kill-leader",
        "stop-leader",
        "kill-agent",
        "kill-redis",
        "stop-redis",
        "kill-etcd",
        "partition",
    },
}


def quota(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quota_cli", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.mark.parametrize("stack", sorted(STACK_FAULTS))
def test_a_seeded_minute_of_chaos_judges_clean(tmp_path: Path, stack: str) -> None:
    history_file = tmp_path / "history.jsonl"
    command = ("chaos", "--stack", stack, "--seconds", "60", "--seed", "1", "--json", "--history", str(history_file))

    done = quota(*command, timeout_s=600)

    summary = json.loads(done.stdout)
    assert summary["violations"]
    assert set(summary["violations"].values()) == {0}, summary["examples"]
    assert summary["ok"]
    assert done.returncode == 0
    kinds = STACK_FAULTS[stack] | ADMIN_FAULTS
    assert {fault["kind"] for fault in summary["schedule"]} == kinds
    assert {kind for kind, count in summary["injected"].items() if count} == kinds
    assert set(summary["faults"]) == kinds
    assert summary["operations"][Status.OK] > 0
    # Sell-out, the freeze and the per-user limit all refused orders: the budget and both switches bit.
    for reason in ("EXHAUSTED", "FROZEN", "USER_LIMIT"):
        assert summary["refused_by_reason"].get(f"REJECT_REASON_{reason}", 0) > 0, reason
    history = History.from_jsonl(history_file.read_text())
    assert len(history.operations) == sum(summary["operations"].values())


def test_a_history_file_that_cannot_be_written_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    nowhere = tmp_path / "missing" / "history.jsonl"

    done = quota("chaos", "--seconds", "600", "--history", str(nowhere), timeout_s=60)

    assert done.returncode == 2
    missing = f"quota: error: Invalid value for --history: {nowhere}: No such file or directory"
    (line,) = done.stderr.splitlines()
    assert line.startswith(missing)


@pytest.mark.parametrize(
    ("saved", "refusal"),
    [
        ('{"seed": 7}', "not a chaos schedule"),
        ('{"schedule": [], "stack": "redis-etcd-typo", "seconds": 60, "seed": 7}', "its settings are not a run's"),
    ],
)
def test_a_schedule_that_cannot_be_replayed_stops_the_run_before_it_starts(
    tmp_path: Path, saved: str, refusal: str
) -> None:
    schedule = tmp_path / "quota-chaos-embedded-seed7.json"
    schedule.write_text(saved + "\n")

    done = quota("chaos", "--schedule", str(schedule), timeout_s=60)

    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"quota: error: Invalid value for --schedule: {schedule}: {refusal}")
