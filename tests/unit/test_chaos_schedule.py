"""The nemesis's schedule: decided by the seed alone, every kind at least once, one fault at a time on each track
(the stack's faults, the budget owner's actions), and the same faults back from a saved run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from loadtest.chaos.nemesis import ADMIN_FAULTS, Fault, load_schedule, recorded_settings, schedule, schedule_rows

FAULTS = {
    "kill-leader": ("leader",),
    "partition": ("eu", "us"),
    "freeze": ("p1", "p2"),
    "emergency": ("eu", ""),
    "budget": ("p1",),
}


def overlapping(faults: list[Fault]) -> list[tuple[Fault, Fault]]:
    return [(a, b) for a, b in itertools.pairwise(faults) if b.at_s < a.at_s + a.hold_s]


@given(seed=st.integers(), seconds=st.floats(min_value=1, max_value=600))
def test_a_seed_decides_the_schedule_and_each_track_runs_one_fault_at_a_time(seed: int, seconds: float) -> None:
    faults = schedule(seed, seconds, FAULTS)

    assert faults == schedule(seed, seconds, FAULTS)
    assert {fault.kind for fault in faults} == set(FAULTS)
    assert all(fault.target in FAULTS[fault.kind] for fault in faults)
    assert not overlapping([fault for fault in faults if fault.kind in ADMIN_FAULTS])
    assert not overlapping([fault for fault in faults if fault.kind not in ADMIN_FAULTS])


def test_an_action_can_land_while_the_stack_is_broken() -> None:
    """Over a long run some freeze or switch starts while a partition or a leader kill holds."""
    faults = schedule(1, 600, FAULTS)
    breaks = [fault for fault in faults if fault.kind not in ADMIN_FAULTS]
    actions = [fault for fault in faults if fault.kind in ADMIN_FAULTS]

    assert any(b.at_s <= a.at_s <= b.at_s + b.hold_s for a in actions for b in breaks)


def test_a_saved_run_gives_back_its_faults_and_settings(tmp_path: Path) -> None:
    faults = schedule(7, 60, FAULTS)
    saved, bare = tmp_path / "run.json", tmp_path / "schedule.json"
    saved.write_text(json.dumps({"schedule": schedule_rows(faults), "stack": "embedded", "seconds": 60, "seed": 7}))
    bare.write_text(json.dumps(schedule_rows(faults)))

    assert load_schedule(saved) == load_schedule(bare) == faults
    assert recorded_settings(saved) == {"stack": "embedded", "seconds": 60.0, "seed": 7}
    assert recorded_settings(bare) == {}
