"""The README's two commands: `make run` installs what the demo runs on, `make test` the developer extra too.

`make -n` prints what a fresh clone would run without running it, so this reads the real Makefile.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _planned(target: str, venv: Path, *flags: str) -> list[str]:
    # Under `make test` this runs inside make: its flags and level would leak into the inner make.
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    environment = {name: value for name, value in os.environ.items() if name not in outer}
    printed = subprocess.run(
        ["make", "--no-print-directory", "-n", *flags, target, f"VENV={venv}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return printed.splitlines()


def test_make_run_on_a_fresh_clone_installs_the_runtime_only_then_runs_the_demo(tmp_path: Path) -> None:
    commands = _planned("run", tmp_path / "venv")

    installs = [command for command in commands if " install " in command and "--upgrade pip" not in command]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e ."]
    assert commands[-1] == f"{tmp_path / 'venv'}/bin/quota demo"


def test_make_test_on_a_fresh_clone_adds_the_developer_extra(tmp_path: Path) -> None:
    commands = _planned("test", tmp_path / "venv")

    assert f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[dev]'" in commands


def test_make_test_installs_the_consoles_locked_assets(tmp_path: Path) -> None:
    """As on a fresh clone, where quota_console/assets/node_modules is not there yet (-B: as if out of date)."""
    commands = _planned("test", tmp_path / "venv", "-B")

    assert "npm ci --prefix quota_console/assets --no-audit --no-fund" in commands
