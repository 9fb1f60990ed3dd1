"""The fixtures of the Helm chart's tests: helm itself, and the chart rendered with values."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # installed with kubernetes-validate, without stubs

from tests.helm.chart import CHART, FETCHED_HELM, NAMESPACE, RELEASE, THREE_REGIONS, Helm, Manifest, Render


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = shutil.which("helm") or (str(FETCHED_HELM) if FETCHED_HELM.exists() else None)
    if binary is None:
        pytest.fail(
            "helm is neither on the PATH nor at .cache/helm/helm: run `make test` (which fetches it) or "
            "`.venv/bin/python scripts/fetch_helm.py`",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("helm-home")
    # Rendering a local chart needs no repositories; keep helm away from the user's own configuration.
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    return run


@pytest.fixture(scope="module")
def render(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """`helm template` of the chart with these values files (paths, or dicts written to files)."""
    values_dir = tmp_path_factory.mktemp("values")
    numbers = itertools.count()

    def template(*values: Path | dict[str, Any]) -> list[Manifest]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for value in values:
            if isinstance(value, dict):
                path = values_dir / f"values-{next(numbers)}.yaml"
                path.write_text(yaml.safe_dump(value))
                value = path
            args += ["--values", str(value)]
        done = helm(*args)
        assert done.returncode == 0, done.stderr
        return [manifest for manifest in yaml.safe_load_all(done.stdout) if manifest]

    return template


@pytest.fixture(scope="module")
def three_regions(render: Render) -> list[Manifest]:
    return render(THREE_REGIONS)
