"""`quota reconcile` against running processes: a region on Redis whose books agree, then a grant planted
in its Redis ledger, which the command names with the promotion, the region and the amount."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_testing.redis_region import RedisRegion, region_on_redis
from quota_testing.servers import redis_server
from quota_testing.support import eventually, order
from region_agent.v1 import region_agent_pb2 as agent_pb

pytestmark = pytest.mark.e2e


async def reconcile(region: RedisRegion, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quota_cli", "reconcile", "--center", region.center.address]
    command += ["--agent", f"eu={region.agents[0].address}", "--recheck-after", "0.5", *args]
    wide = {**os.environ, "COLUMNS": "300"}
    return await asyncio.to_thread(subprocess.run, command, env=wide, capture_output=True, text=True, timeout=60)


async def settled(region: RedisRegion) -> bool:
    """The center was told of every deduction the ledger made, and the ledger applied every grant."""
    [balance] = (await region.stubs[0].GetStatus(agent_pb.GetStatusRequest(), timeout=5)).balances
    [books] = [row for row in (await region.usage()).regions if row.region == "eu"]
    return (books.consumed, books.granted) == (balance.deducted - balance.refunded, balance.granted)


def findings(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    report: list[dict[str, Any]] = json.loads(done.stdout)["findings"]
    return [{key: finding[key] for key in ("promotion_id", "region", "amount", "cause")} for finding in report]


async def test_a_grant_planted_in_a_regions_redis_is_named_with_its_promotion_region_and_amount(
    tmp_path: Path,
) -> None:
    with redis_server() as server:
        async with region_on_redis(tmp_path, server.address, budget=1_000) as region:
            for number in range(5):
                await region.stubs[0].Deduct(order(f"o-{number}", "eu", ("promo", 2)), timeout=5)
            await eventually(lambda: settled(region))

            agreed = await reconcile(region, "--json")
            typo = await reconcile(region, "--promotion", "prmo")

            assert agreed.returncode == 0, agreed.stderr
            assert json.loads(agreed.stdout) == {
                "agree": True,
                "checked": {"promotions": 1, "regions": ["eu"]},
                "findings": [],
            }

            assert typo.returncode == 3, typo.stdout  # a typo is not "the books agree"
            assert "no promotion with id 'prmo'" in typo.stderr
            redis = Redis(host=server.host, port=server.port)
            life = await redis.hget("{quota:eu}:incarnation", "life")
            assert isinstance(life, bytes)
            await redis.hincrby(f"{{quota:eu}}:{life.decode()}:balance:promo", "granted", 7)
            await redis.aclose()

            found = await reconcile(region, "--json")
            table = await reconcile(region)

    assert found.returncode == 5, found.stderr
    assert {"promotion_id": "promo", "region": "eu", "amount": 7, "cause": "grant_not_made"} in findings(found)
    assert {"promotion_id": "promo", "region": "eu", "amount": 7, "cause": "ledger_inconsistent"} in findings(found)
    assert table.returncode == 5
    row = "│ promo │ eu │ 7 │ no │ the ledger counts grants the center never made"
    assert row in " ".join(table.stdout.split())


async def test_the_center_alerts_on_a_ledger_altered_in_redis_from_its_renewals_alone(tmp_path: Path) -> None:
    """No one runs `quota reconcile`: the center sees the ledger's own available beside its counters at every
    renewal, and raises a reconcile alert naming the promotion, the region and the amount."""
    with redis_server() as server:
        flags = ("--alert-interval", "0.5")
        async with region_on_redis(tmp_path, server.address, budget=1_000, center_flags=flags) as region:
            await region.stubs[0].Deduct(order("o-1", "eu", ("promo", 2)), timeout=5)
            await eventually(lambda: settled(region))
            redis = Redis(host=server.host, port=server.port)
            life = await redis.hget("{quota:eu}:incarnation", "life")
            assert isinstance(life, bytes)
            await redis.hincrby(f"{{quota:eu}}:{life.decode()}:balance:promo", "available", 9)
            await redis.aclose()

            async def alerted() -> list[center_pb.Alert]:
                listed = await region.admin.ListAlerts(center_pb.ListAlertsRequest(promotion_id="promo"), timeout=5)
                return [alert for alert in listed.alerts if alert.rule == "reconcile"]

            async def raised() -> bool:
                return bool(await alerted())

            await eventually(raised)
            [alert] = await alerted()

    assert (alert.promotion_id, alert.region) == ("promo", "eu")
    assert "9 apart; the ledger's counters disagree with each other" in alert.message
