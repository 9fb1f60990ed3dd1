"""The chaos checker catches planted bugs: an agent that acknowledges a deduction before writing it, a center that
grants a retried acquire again, a ledger that forgets one refund. Each is planted in the servers a run starts by
quota_testing/chaos_plants (a sitecustomize on their PYTHONPATH, see planted.py there), never by editing the code under
test, and the run must judge it. A failing run replays from its seed and schedule to the same violation.

A clean run is test_chaos.py's; here each run only has to find its bug.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import quota_testing
from loadtest.chaos.nemesis import Fault, schedule_rows
from loadtest.chaos.run import ChaosOptions, run_chaos

pytestmark = pytest.mark.e2e

PLANTS = Path(quota_testing.__file__).resolve().parent / "chaos_plants"
SECONDS = 8.0
"""Long enough for both promotions to sell out, which ack-before-write and double-grant need to show."""
SEED = 1
ONE_KILL = [Fault(at_s=4.0, kind="kill-leader", hold_s=1.0, target="center")]
"""A short schedule of the plant runs' own: the seeded one first injects every kind of fault once, well past a
short load, and these runs only need a nemesis, not all of it. Late enough that the center answers a few acquires
first (a restarted center has forgotten which answers double-grant lost)."""


def _plant(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The servers started from now inherit both, so Python plants `name` in each as it starts."""
    monkeypatch.setenv("PYTHONPATH", str(PLANTS), prepend=os.pathsep)
    monkeypatch.setenv("QUOTA_CHAOS_PLANT", name)


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        # Every deduction after the sell-out is acknowledged, and none of them is in the books.
        pytest.param("ack-before-write", ("over_issue", "lost_acknowledgement"), id="ack-before-write"),
        # The region holds a grant twice, so the center refuses its reports from then on and its final return:
        # what it held stays counted against the budget.
        pytest.param("double-grant", ("held_after_return",), id="double-grant"),
        # The books keep the units of a refund the client was told of.
        pytest.param("forget-refund", ("phantom_consumption",), id="forget-refund"),
    ],
)
def test_the_checker_catches_a_planted_bug(
    plant: str, expected: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant(monkeypatch, plant)
    faults = tmp_path / "schedule.json"
    faults.write_text(json.dumps(schedule_rows(ONE_KILL)))

    summary = run_chaos(ChaosOptions(seconds=SECONDS, seed=SEED, schedule=faults))

    assert not summary["ok"]
    missed = [kind for kind in expected if summary["violations"][kind] == 0]
    assert not missed, (summary["violations"], summary["examples"])


def test_a_failing_run_replays_from_its_seed_and_schedule_to_the_same_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant(monkeypatch, "forget-refund")
    first = run_chaos(ChaosOptions(seconds=SECONDS, seed=SEED))
    assert first["violations"]["phantom_consumption"] > 0, first["examples"]
    saved = tmp_path / "schedule.json"
    saved.write_text(json.dumps(first["schedule"]))

    replayed = run_chaos(ChaosOptions(seconds=SECONDS, seed=SEED, schedule=saved))

    assert replayed["schedule"] == first["schedule"]
    assert replayed["violations"]["phantom_consumption"] > 0, replayed["examples"]
