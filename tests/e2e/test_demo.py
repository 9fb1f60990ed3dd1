"""`quota demo --json` sells out exactly, mostly without the center, and leaves nothing running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _demo_processes() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"quota-demo-" in arg for arg in args):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def test_demo_sells_out_exactly_with_few_center_calls() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quota_center", "demo", "--json", "--budget", "20000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    figures = json.loads(done.stdout)
    assert figures["over_issue"] == 0
    assert figures["issued"] >= 0.999 * figures["budget"]
    assert figures["center_calls"] * 1000 / figures["deductions"] < 20
    assert set(figures["regions"]) == {"eu", "us", "ap"}
    assert sum(r["acked"] for r in figures["regions"].values()) == figures["issued"]
    assert _demo_processes() == []
