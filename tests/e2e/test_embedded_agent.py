"""An agent embedded in an order service (this test's process) beside an agent process of its region, on one
Redis: one ledger, one allotment, one set of books at the center; called as the client library is."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_client import Exhausted, Frozen, InvalidRequest, Line, OrderStatus, QuotaClientError, Refused
from quota_client.embedded import EmbeddedAgent
from quota_common.errors import ConfigError
from quota_common.transport import Security
from quota_testing.redis_region import region_on_redis
from quota_testing.servers import redis_server
from quota_testing.support import eventually, order
from region_agent.agent import AgentSettings
from region_agent.app import AgentConfig
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e


def _config(center: str, redis_address: str, renew_interval_s: float = 0.2) -> AgentConfig:
    settings = AgentSettings("eu", renew_interval_s=renew_interval_s)
    return AgentConfig(
        settings, center=(center,), ledger=f"redis://{redis_address}/0", security=Security(insecure=True)
    )


def _one(promotion_id: str = "promo") -> tuple[Line]:
    return (Line(promotion_id, 1, "user-1"),)


async def test_embedded_and_process_agents_on_one_redis_sell_out_exactly(tmp_path: Path) -> None:
    with redis_server() as redis:
        async with (
            region_on_redis(tmp_path, redis.address, budget=1_500) as region,
            EmbeddedAgent.start(_config(region.center.address, redis.address)) as embedded,
        ):
            numbers = iter(range(2_000))
            acked = {"process": 0, "embedded": 0}

            async def through_process(stub: agent_grpc.RegionAgentAsyncStub) -> None:
                for number in numbers:
                    try:
                        await stub.Deduct(order(f"o-{number}", "eu", ("promo", 1)), timeout=5)
                    except grpc.aio.AioRpcError:
                        continue
                    acked["process"] += 1

            async def embedded_worker() -> None:
                for number in numbers:
                    try:
                        await embedded.deduct(f"o-{number}", _one())
                    except QuotaClientError:
                        continue
                    acked["embedded"] += 1

            await asyncio.gather(
                *(through_process(region.stubs[0]) for _ in range(8)), *(embedded_worker() for _ in range(8))
            )
            process_status = await region.stubs[0].GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            embedded_status = await embedded.status()

            async def reported() -> bool:
                return (await region.usage()).regions[0].consumed == sum(acked.values())

            await eventually(reported)
            with pytest.raises(Exhausted) as spent:
                await embedded.deduct("after-the-sell-out", _one())

    assert sum(acked.values()) == 1_500
    assert acked["process"] > 0
    assert acked["embedded"] > 0
    assert embedded_status.incarnation == process_status.incarnation
    assert process_status.balances[0].deducted == embedded_status.balances[0].deducted == 1_500
    assert spent.value.promotion_id == "promo"
    assert not spent.value.may_have_applied


async def test_a_freeze_reaches_the_embedded_agent(tmp_path: Path) -> None:
    with redis_server() as redis:
        async with (
            region_on_redis(tmp_path, redis.address, budget=1_000) as region,
            EmbeddedAgent.start(_config(region.center.address, redis.address)) as embedded,
        ):
            await embedded.deduct("before", _one())
            await region.admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="promo", frozen=True), timeout=5)
            keys = (f"after-{number}" for number in itertools.count())
            refusals: list[Refused] = []

            async def refused() -> bool:
                try:
                    await embedded.deduct(next(keys), _one())
                except Refused as refusal:
                    refusals.append(refusal)
                    return True
                return False

            await eventually(refused)
            replay = await embedded.deduct("before", _one())
            status = await embedded.status()
            placed = await embedded.get_order("before")

    assert isinstance(refusals[0], Frozen)
    assert replay.replayed
    assert status.balances[0].frozen
    assert [group.group for group in status.groups] == ["default"]
    assert placed.status is OrderStatus.DEDUCTED  # placed before the freeze: still there to read and refund
    assert placed.lines == _one()


async def test_the_embedded_agents_renewals_keep_its_leases(tmp_path: Path) -> None:
    lease_ttl_s = 1.0
    with redis_server() as redis:
        async with (
            region_on_redis(
                tmp_path, redis.address, budget=1_000, agents=0, center_flags=("--lease-ttl", "1")
            ) as region,
            EmbeddedAgent.start(_config(region.center.address, redis.address)) as embedded,
        ):
            await embedded.deduct("o-1", _one())
            await asyncio.sleep(4 * lease_ttl_s)
            later = await embedded.deduct("o-2", _one())
            status = await embedded.status()

            async def reported() -> bool:
                return (await region.usage()).regions[0].consumed == 2

            await eventually(reported)

    assert not later.replayed
    assert status.balances[0].lease_remaining_ms > 0


async def test_an_embedded_agent_checks_its_input_and_wants_the_regions_redis(tmp_path: Path) -> None:
    with redis_server() as redis:
        async with (
            region_on_redis(tmp_path, redis.address, budget=10, agents=0) as region,
            EmbeddedAgent.start(_config(region.center.address, redis.address)) as embedded,
        ):
            with pytest.raises(InvalidRequest, match="order_key"):
                await embedded.deduct("", _one())
            with pytest.raises(InvalidRequest, match="at least one line"):
                await embedded.deduct("o-1", ())
            with pytest.raises(InvalidRequest, match="ttl_ms"):
                await embedded.reserve("o-1", _one(), ttl_s=0.01)
            mistyped: list[Any] = [1.5, True, Decimal(2)]
            # Batched with good orders into one script call, a bad amount would fail them all, after some applied.
            answers = await asyncio.gather(
                *(embedded.deduct(f"good-{n}", _one()) for n in range(6)),
                *(embedded.deduct(f"bad-{n}", (Line("promo", amount, "user-1"),)) for n, amount in enumerate(mistyped)),
                embedded.deduct("partly-bad", (*_one(), Line("other", mistyped[0], "user-1"))),
                return_exceptions=True,
            )
            with pytest.raises(ValueError, match="deadline_s must be positive"):
                await embedded.deduct("no-time", _one(), deadline_s=0)
            unknown = await embedded.get_order("never-placed")
            partly_bad = await embedded.get_order("partly-bad")
            no_time = await embedded.get_order("no-time")
            status = await embedded.status()
        with pytest.raises(RuntimeError, match="stopped"):
            await embedded.deduct("after-the-block", _one())  # the center has its last report already
        with pytest.raises(ConfigError, match="region's ledger"):
            async with EmbeddedAgent.start(AgentConfig(AgentSettings("eu"), ledger="memory")):
                pass

    assert [type(answer).__name__ for answer in answers] == ["Deducted"] * 6 + ["InvalidRequest"] * 4
    assert all("lines.amount must be a whole number" in str(answer) for answer in answers[6:])
    assert unknown.status is partly_bad.status is no_time.status is OrderStatus.UNKNOWN
    assert status.region == "eu"
    assert {promotion.promotion_id: promotion.deducted for promotion in status.balances} == {"promo": 6}
