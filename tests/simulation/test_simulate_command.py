"""The simulator replays bit for bit: two processes (each hashing strings its own way, each laying out memory
its own way) print the same figures for a seed, from `quota simulate --json` and from a run with crashes,
a partition and lost and late messages. Cheap scenarios here; the whole run takes minutes
(docs/strategies.md), and tests/simulation/test_simulator.py checks every scenario at a smaller size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtest.simulation.run import STRATEGIES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCENARIOS = ("partition", "low_demand")


FAULTY = """
import json
from loadtest.simulation.run import simulate
from tests.simulation.test_simulator import faulty
print(json.dumps(simulate(faulty(), "distribution", 3)))
"""


def twice(command: list[str]) -> str:
    """The output of `command` run in two processes at once, which must be the same."""
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": str(seed)})
        for seed in (1, 2)
    ]
    first, second = (run.communicate()[0] for run in runs)
    assert [run.returncode for run in runs] == [0, 0]
    assert first == second
    return first


def test_a_seed_prints_the_same_json_in_every_process() -> None:
    command = [sys.executable, "-m", "quota_cli", "simulate", "--json", "--seed", "3"]
    for scenario in SCENARIOS:
        command += ["--scenario", scenario]
    rows = json.loads(twice(command))["rows"]
    assert [(row["scenario"], row["strategy"]) for row in rows] == [(s, t) for s in SCENARIOS for t in STRATEGIES]
    assert all(row["over_issue"] == 0 for row in rows if row["strategy"] == "distribution")


def test_crashes_partitions_and_lost_messages_replay_in_every_process() -> None:
    row = json.loads(twice([sys.executable, "-c", FAULTY]))
    assert row["over_issue"] == 0
