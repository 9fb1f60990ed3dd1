"""`quota incidents`, as a person runs it: the seeds' three mistakes replayed against real processes, each
caught, with the loss it prevented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_each_incident_is_caught_and_names_the_loss_it_prevented() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quota_cli", "incidents", "--json"], capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stderr
    free_money, swapped, flash = json.loads(done.stdout)
    held = free_money["details"][0]
    assert "zero-threshold-no-user-limit" in held
    assert "zero-threshold-high-face-value" in held
    assert any("froze" in detail for detail in free_money["details"]), free_money["details"]
    assert 0 < free_money["issued_units"] < 100_000  # it sold, and the freeze stopped it well short of the budget
    assert free_money["prevented_yuan"] == (100_000 - free_money["issued_units"]) * 10_000
    assert "discount-above-half-the-threshold" in swapped["details"][0]
    assert (swapped["issued_units"], swapped["prevented_yuan"]) == (0, 50_000 * 400_000)
    assert flash["details"][1] == "blocking on: 100 of 100 refused below_floor"
    let_through = flash["issued_units"]
    assert let_through > 0
    assert (
        flash["details"][2]
        == f"blocking off: {let_through} let through, {let_through} counted below the floor for the alert"
    )
    assert flash["prevented_yuan"] == 100 * (99_900 - 9_990)
