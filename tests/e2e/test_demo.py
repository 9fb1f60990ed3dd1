"""`quota demo --json` sells out exactly, mostly without the center, and leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _processes_marked(mark: str) -> list[str]:
    """Processes whose environment carries `mark`: the demo and everything it started."""
    found = []
    needle = f"QUOTA_TEST_MARK={mark}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_demo_sells_out_exactly_with_few_center_calls() -> None:
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "quota_cli", "demo", "--json", "--budget", "20000"],
        env={**os.environ, "QUOTA_TEST_MARK": mark},
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
    assert _processes_marked(mark) == []
