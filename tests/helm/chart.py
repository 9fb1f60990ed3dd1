"""What the tests of the Helm chart share: where it is, the release they render, the shapes they pass around."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # installed with kubernetes-validate, without stubs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "quota"
THREE_REGIONS = Path(__file__).with_name("values-three-regions.yaml")
FETCHED_HELM = ROOT / ".cache" / "helm" / "helm"
RELEASE = "shop"
NAMESPACE = "promotions"

Manifest = dict[str, Any]
Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[Manifest]]


def refusal(helm: Helm, directory: Path, values: dict[str, Any]) -> str:
    """What `helm template` says when it must refuse `values` (written to a file in `directory`)."""
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm("template", RELEASE, str(CHART), "--values", str(path))
    assert done.returncode != 0, "helm rendered values it must refuse"
    return done.stderr
