"""The checked-in stubs are exactly what scripts/gen_protos.py makes from proto/."""

from __future__ import annotations

from pathlib import Path

from scripts import gen_protos


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    stale = gen_protos.differences(tmp_path)
    assert stale == [], f"run `make protos` and commit: {stale}"


def test_stubs_import_under_their_versioned_packages() -> None:
    from quota_center.v1 import quota_center_pb2
    from region_agent.v1 import region_agent_pb2

    assert quota_center_pb2.DESCRIPTOR.package == "quota_center.v1"
    assert region_agent_pb2.DESCRIPTOR.package == "region_agent.v1"
