"""`quota chaos` on the embedded stack: under kills, stops and freezes of a seeded schedule, the whole history
judges clean, every scheduled fault kind was injected, and the load both succeeded and was refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.chaos.history import History, Status

pytestmark = pytest.mark.e2e


def test_a_seeded_chaos_run_judges_clean(tmp_path: Path) -> None:
    history_file = tmp_path / "history.jsonl"
    command = ["chaos", "--seconds", "20", "--seed", "1", "--json", "--history", str(history_file)]
    done = subprocess.run(
        [sys.executable, "-m", "quota_center", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = json.loads(done.stdout)
    assert summary["violations"]
    assert set(summary["violations"].values()) == {0}, summary["examples"]
    assert summary["ok"]
    assert done.returncode == 0
    scheduled = {fault["kind"] for fault in summary["schedule"]}
    assert scheduled == {"kill", "stop", "freeze"}
    assert all(summary["injected"][kind] >= 1 for kind in scheduled)
    assert summary["operations"][Status.OK] > 0
    assert summary["operations"][Status.REFUSED] > 0
    # Sell-out and the freeze both happened, so the budget and the kill switch were both exercised.
    assert summary["refused_by_reason"].get("REJECT_REASON_EXHAUSTED", 0) > 0
    assert summary["refused_by_reason"].get("REJECT_REASON_FROZEN", 0) > 0
    history = History.from_jsonl(history_file.read_text())
    assert len(history.operations) == sum(summary["operations"].values())


def test_a_history_file_that_cannot_be_written_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    nowhere = tmp_path / "missing" / "history.jsonl"
    command = ["chaos", "--seconds", "600", "--history", str(nowhere)]

    done = subprocess.run(
        [sys.executable, "-m", "quota_center", *command], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 2
    missing = f"quota: error: Invalid value for --history: {nowhere}: No such file or directory"
    (line,) = done.stderr.splitlines()
    assert line.startswith(missing)
