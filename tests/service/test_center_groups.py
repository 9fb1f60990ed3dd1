"""Two center groups over one shard map: each serves the promotions of its slots and refuses the others' with
the owner's name, so a router with a stale map learns where to go; a group giving a slot away grants nothing
of it and asks its regions for everything they hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from quota_admin.client import AdminClient, ServedElsewhere
from quota_center.center_core import CenterSettings
from quota_center.shard_move import Phase, SlotMove
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.errors import Moving, WrongGroup, from_grpc
from quota_common.model import Kind, Promotion, Report
from quota_common.shards import ShardMap
from quota_common.transport import Transport
from quota_testing.inprocess import ServedCenter, issued_incarnation, running_center
from quota_testing.support import promotion

MAP = ShardMap.even(["a", "b"], version=3)
INCARNATION = issued_incarnation(1)


def owned_by(group: str) -> str:
    return next(pid for pid in (f"promo-{i}" for i in range(100)) if MAP.owner_of(pid) == group)


def new_promotion(promotion_id: str) -> Promotion:
    return Promotion(promotion_id, Kind.COUNT, "", 100, 0, 10**13, ("eu",))


@pytest.fixture
async def groups(tmp_path: Path) -> AsyncIterator[dict[str, ServedCenter]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_center(tmp_path / "a", CenterSettings(group="a")) as a,
        running_center(tmp_path / "b", CenterSettings(group="b")) as b,
    ):
        for served in (a, b):
            served.center.set_shards(MAP, {})
        yield {"a": a, "b": b}


async def test_each_group_serves_its_promotions_and_names_the_owner_of_the_others(
    groups: dict[str, ServedCenter],
) -> None:
    mine, theirs = owned_by("a"), owned_by("b")
    center = groups["a"].center
    await center.create_promotion(new_promotion(mine))
    with pytest.raises(WrongGroup) as refused:
        await center.create_promotion(new_promotion(theirs))
    assert refused.value.owner == "b"
    assert [p.id for p in center.promotions()] == [mine]
    async with grpc.aio.insecure_channel(groups["b"].address) as channel:
        stub = center_grpc.AllocationStub(channel)
        agent = pb.AgentIdentity(region="eu", incarnation=INCARNATION)
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await stub.Acquire(pb.AcquireRequest(agent=agent, promotion_id=mine, amount=5, request_id="r-1"))
    assert call.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = from_grpc(call.value)
    assert isinstance(error, WrongGroup)
    assert (error.owner, error.map_version) == ("a", MAP.version)
    # Nothing of the refused calls landed anywhere.
    assert await groups["b"].store.load_all() == []


async def test_a_draining_slot_grants_nothing_and_asks_for_everything_back(groups: dict[str, ServedCenter]) -> None:
    promotion_id = owned_by("a")
    center = groups["a"].center
    await center.create_promotion(new_promotion(promotion_id))
    granted = (await center.acquire("eu", INCARNATION, promotion_id, 30, "r-1", demand=0)).grant.amount
    assert granted > 1
    slot = MAP.slot(promotion_id)
    move = SlotMove(slot, "a", "b")
    center.set_shards(MAP, {slot: move})
    with pytest.raises(Moving, match="moving to center group 'b'"):
        await center.acquire("eu", INCARNATION, promotion_id, 5, "r-2", demand=0)
    spent = Report(granted=granted, returned=0, deducted=1, refunded=0)
    (directive,) = await center.renew("eu", INCARNATION, {promotion_id: spent})
    assert not isinstance(directive, Exception)
    assert directive.reclaim == granted - 1
    assert move.observe(center.slot_holdings(slot)).phase is Phase.DRAINING
    returned = Report(granted=granted, returned=granted - 1, deducted=1, refunded=0)
    await center.return_quota("eu", INCARNATION, promotion_id, returned)
    assert move.observe(center.slot_holdings(slot)).phase is Phase.DRAINED
    # The group that is to receive the slot still refuses it until the map names it.
    groups["b"].center.set_shards(MAP, {slot: move})
    with pytest.raises(WrongGroup):
        await groups["b"].center.acquire("eu", INCARNATION, promotion_id, 5, "r-3", demand=0)


def _create(client: AdminClient, promotion_id: str) -> pb.Promotion:
    request = pb.CreatePromotionRequest(promotion=promotion(promotion_id, regions=("eu",)))
    return client.call(lambda admin: admin.CreatePromotion, request, idempotent=False)


async def test_the_admin_client_routes_by_promotion_and_lists_every_group(groups: dict[str, ServedCenter]) -> None:
    client = AdminClient([f"a={groups['a'].address}", f"b={groups['b'].address}"], 5.0, Transport())
    created = [owned_by("a"), owned_by("b")]

    def work() -> tuple[list[str], list[str], list[str]]:
        for promotion_id in created:
            _create(client, promotion_id)
        shown = [
            client.call(lambda admin: admin.GetUsage, pb.GetUsageRequest(promotion_id=p)).promotion.id for p in created
        ]
        listed = [
            p.id
            for page in client.every_group_page(
                lambda admin: admin.ListPromotions, lambda t: pb.ListPromotionsRequest(page_token=t)
            )
            for p in page.promotions
        ]
        frozen = pb.SetEmergencyFreezeRequest(region="eu", frozen=True)
        switches = client.fan_out(lambda admin: admin.SetEmergencyFreeze, frozen)
        return shown, listed, [",".join(s.regions) for s in switches]

    shown, listed, switches = await asyncio.to_thread(work)
    assert shown == created
    assert sorted(listed) == sorted(created)
    assert switches == ["eu", "eu"]  # the switch reaches every group
    assert [p.id for p in groups["a"].center.promotions()] == [owned_by("a")]
    assert [p.id for p in groups["b"].center.promotions()] == [owned_by("b")]
    # A group the client was not told of is named, with what to do.
    only_a = AdminClient([groups["a"].address], 5.0, Transport())
    with pytest.raises(ServedElsewhere, match="FAILED_PRECONDITION") as refused:
        await asyncio.to_thread(
            only_a.call, lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=owned_by("b"))
        )
    assert refused.value.owner == "b"
    assert "b=HOST:PORT" in refused.value.hint
