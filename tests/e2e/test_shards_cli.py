"""`quota shards` against real center processes on etcd: a resize from the implicit one-group map hands half
the slots to a second group, whose process then serves them; the plan and every flip are audited."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quota_admin.client import AdminClient, ServedElsewhere
from quota_center.v1 import quota_center_pb2 as pb
from quota_common.shards import ShardMap, rebalance
from quota_common.transport import Transport
from quota_testing.launch import ServerProcess, center_process, run_quota
from quota_testing.servers import RunningServer, etcd_server
from quota_testing.support import create_when_leading, promotion

pytestmark = pytest.mark.e2e


@pytest.fixture
def etcd() -> Iterator[RunningServer]:
    with etcd_server() as server:
        yield server


def _shards(tmp_path: Path, *args: str) -> str:
    done = run_quota("shards", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_resize_hands_slots_to_a_new_group_which_then_serves_them(etcd: RunningServer, tmp_path: Path) -> None:
    store = f"etcd://{etcd.address}/test/{uuid.uuid4().hex}"
    centers: list[ServerProcess] = []
    try:
        for group in ("default", "g1"):
            (tmp_path / group).mkdir()
            centers.append(center_process(tmp_path / group, "--group", group, store=store).start())
        default, g1 = centers
        client = AdminClient([f"default={default.address}", f"g1={g1.address}"], 10.0, Transport())
        planned_map = rebalance(ShardMap.single(), ["default", "g1"])
        moving = next(p for p in (f"promo-{i}" for i in range(50)) if planned_map.owner_of(p) == "g1")
        request = pb.CreatePromotionRequest(promotion=promotion(moving, regions=("eu",)))
        create_when_leading(client, request)
        assert "version 0, 1024 slots\n  default: 1024 slots" in _shards(tmp_path, "show", "--store", store)

        planned = _shards(tmp_path, "resize", "--store", store, "--groups", "default,g1", "--yes")
        assert "512 of 1024 slots change hands: 512 default -> g1" in planned
        refused = run_quota("shards", "resize", "--store", store, "--groups", "default,g1,g2", "--yes", cwd=tmp_path)
        assert refused.returncode != 0
        assert "still being handed over" in refused.stderr

        deadline = time.monotonic() + 60
        while "being handed over" in (shown := _shards(tmp_path, "show", "--store", store)):
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        assert "default: 512 slots\n  g1: 512 slots" in shown
        trail = _shards(tmp_path, "audit", "--store", store).splitlines()
        assert "operator" in trail[0]
        assert trail[0].endswith(": 512 slots planned to move")
        assert len(trail) == 1 + 512
        assert all(line.endswith("center group default: 1 slots handed over (default -> g1)") for line in trail[1:])
        # The promotion moved with its slot: g1 serves it, the default group names g1.
        got = client.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=moving))
        assert got.id == moving
        only_default = AdminClient([default.address], 10.0, Transport())
        with pytest.raises(ServedElsewhere, match="served by center group 'g1'"):
            only_default.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=moving))
    finally:
        for center in centers:
            center.stop()
