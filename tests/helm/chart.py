"""What the tests of the Helm chart share: where it is, the release they render, the shapes they pass around."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "quota"
THREE_REGIONS = Path(__file__).with_name("values-three-regions.yaml")
FETCHED_HELM = ROOT / ".cache" / "helm" / "helm"
RELEASE = "shop"
NAMESPACE = "promotions"

Manifest = dict[str, Any]
Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[Manifest]]
