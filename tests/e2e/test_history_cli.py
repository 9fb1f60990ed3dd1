"""`quota budget history` against running processes: the leading center samples what a region spends, and
the command prints it as JSON and draws it as a PNG."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import agent_process, center_process
from quota_testing.support import eventually, order, promotion
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e


async def history(center: str, *args: str, promotion_id: str = "promo") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quota_cli", "budget", "--center", center, "history", promotion_id, *args]
    env = {**os.environ, "COLUMNS": "160"}
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=30)


def eu_points(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    regions: dict[str, list[dict[str, Any]]] = {
        region["region"]: region["points"] for region in json.loads(done.stdout)["regions"]
    }
    return regions.get("eu", [])


async def test_history_shows_what_a_region_spent_over_time_and_draws_it(tmp_path: Path) -> None:
    center = center_process(tmp_path, "--history-interval", "1").start()
    agent = agent_process(tmp_path, "eu", center.address, "--renew-interval", "0.2").start()
    try:
        async with grpc.aio.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
        async with grpc.aio.insecure_channel(agent.address) as orders:
            for number in range(3):
                await agent_grpc.RegionAgentStub(orders).Deduct(order(f"o-{number}", "eu", ("promo", 4)), timeout=5)

        async def spent_shows() -> bool:
            points = eu_points(await history(center.address, "--json"))
            return bool(points) and points[-1]["consumed"] == 12

        await eventually(spent_shows)
        chart = tmp_path / "promo.png"
        drawn = await history(center.address, "--png", str(chart))
        missing = await history(center.address, promotion_id="nope")
    finally:
        agent.kill()
        center.kill()

    assert drawn.returncode == 0, drawn.stderr
    assert f"wrote {chart}: consumed by region over time (eu blue)" in drawn.stdout
    assert "│ eu " in drawn.stdout
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert missing.returncode == 3
    assert "no promotion with id 'nope'" in missing.stderr
