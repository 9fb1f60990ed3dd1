"""Test-only: plants a known bug in every server a chaos test starts, so the test can show the checker catches it.

Python imports `sitecustomize` at interpreter start from the first folder on its path that has one.
tests/faults/test_chaos_plants.py puts this folder first on PYTHONPATH and names a plant in QUOTA_CHAOS_PLANT; the
servers it starts inherit both and, before they run a line of their own, get the bug monkeypatched in (see
`planted`). The code under test is never edited. Without QUOTA_CHAOS_PLANT nothing is planted.

Whatever `sitecustomize` this one shadows (Debian's Python ships one) still runs, after the plant.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PLANT_VARIABLE = "QUOTA_CHAOS_PLANT"
_HERE = Path(__file__).resolve().parent


def _plant() -> None:
    name = os.environ.get(PLANT_VARIABLE, "")
    if name:
        # Beside this file, whose folder is on sys.path: that is how Python found this one.
        try:
            importlib.import_module("planted").install(name)
        except ValueError as error:
            # Python reports any other error in sitecustomize and runs on, here unplanted: a test would then
            # look for a bug that is not there.
            raise SystemExit(f"{PLANT_VARIABLE}: {error}") from None


def _run_shadowed() -> None:
    """Runs the next `sitecustomize` on the path, the one Python would have run without this folder."""
    for entry in sys.path:
        folder = Path(entry or ".").resolve()
        candidate = folder / "sitecustomize.py"
        if folder == _HERE or not candidate.is_file():
            continue
        spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        return


_plant()
_run_shadowed()
