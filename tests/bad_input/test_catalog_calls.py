"""Bad input to the catalog, the emergency switch and opening allotments: precise status, actionable message,
nothing changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.bad_calls import (
    BAD_AMOUNTS,
    BAD_IDS,
    FAILED,
    ID_128,
    ID_129,
    INVALID,
    World,
    acquire,
    create,
    identity,
    rejected,
    unchanged,
)
from quota_testing.inprocess import ServedCenter, issued_incarnation
from quota_testing.support import promotion


@pytest.fixture
async def catalog(center: ServedCenter) -> AsyncIterator[center_grpc.CatalogAsyncStub]:
    async with grpc.aio.insecure_channel(center.address) as channel:
        yield center_grpc.CatalogStub(channel)


def catalog_request(region: str = "eu", since_revision: int = 0, page_size: int = 0) -> center_pb.CatalogRequest:
    return center_pb.CatalogRequest(region=region, since_revision=since_revision, page_size=page_size)


async def first_message(catalog: center_grpc.CatalogAsyncStub, request: center_pb.CatalogRequest) -> object:
    """Opens a Watch and reads its first message (an error status raises), then closes the stream."""
    call = catalog.Watch(request, timeout=5)
    try:
        return await call.read()
    finally:
        call.cancel()


async def next_change(
    call: grpc.aio.UnaryStreamCall[center_pb.CatalogRequest, center_pb.CatalogChanges],
) -> center_pb.CatalogChanges:
    """The next message on an open Watch that carries promotions, skipping idle heartbeats."""
    while True:
        message = await call.read()
        assert isinstance(message, center_pb.CatalogChanges), "the center ended the catalog stream"
        if message.promotions:
            return message


async def newest_revision(world: World) -> int:
    listed = await world.admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=5)
    return max(p.revision for p in listed.promotions)


async def emergency_of(catalog: center_grpc.CatalogAsyncStub) -> center_pb.EmergencyFreeze:
    return (await catalog.ListChanges(catalog_request(), timeout=5)).emergency


def freeze(region: str, frozen: bool = True) -> center_pb.SetEmergencyFreezeRequest:
    return center_pb.SetEmergencyFreezeRequest(region=region, frozen=frozen)


# ListChanges and Watch

BAD_CATALOG_REQUESTS = [
    pytest.param(catalog_request(region=""), ["region", "is required"], id="region-empty"),
    pytest.param(catalog_request(region=ID_129), ["region", "129 bytes"], id="region-129-bytes"),
    pytest.param(catalog_request(since_revision=-1), ["since_revision", "-1"], id="since-negative"),
    pytest.param(catalog_request(page_size=-1), ["page_size", "5000"], id="page-size-negative"),
    pytest.param(catalog_request(page_size=5001), ["page_size", "5000"], id="page-size-5001"),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_CATALOG_REQUESTS)
async def test_list_changes_rejects_a_bad_request(
    center_world: World,
    catalog: center_grpc.CatalogAsyncStub,
    request_: center_pb.CatalogRequest,
    fragments: list[str],
) -> None:
    async with unchanged(center_world):
        await rejected(catalog.ListChanges(request_, timeout=5), INVALID, *fragments)


@pytest.mark.parametrize(("request_", "fragments"), BAD_CATALOG_REQUESTS)
async def test_watch_rejects_a_bad_request(
    center_world: World,
    catalog: center_grpc.CatalogAsyncStub,
    request_: center_pb.CatalogRequest,
    fragments: list[str],
) -> None:
    async with unchanged(center_world):
        await rejected(first_message(catalog, request_), INVALID, *fragments)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(catalog_request(region=ID_128), id="region-128-bytes"),
        pytest.param(catalog_request(page_size=0), id="page-size-0-default"),
        pytest.param(catalog_request(page_size=5000), id="page-size-5000"),
        pytest.param(catalog_request(since_revision=0), id="since-0-everything"),
    ],
)
async def test_list_changes_accepts_the_boundaries(
    center_world: World, catalog: center_grpc.CatalogAsyncStub, request_: center_pb.CatalogRequest
) -> None:
    answer = await catalog.ListChanges(request_, timeout=5)

    assert not answer.more
    assert answer.revision == await newest_revision(center_world)


async def test_list_changes_answers_the_regions_promotions_in_revision_order(
    center_world: World, catalog: center_grpc.CatalogAsyncStub
) -> None:
    await create(center_world.admin, promotion("eu-only", regions=("eu",)))
    await center_world.admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="existing", frozen=True), timeout=5)
    await create(center_world.admin, promotion("us-only", regions=("us",)))
    newest = await newest_revision(center_world)

    answer = await catalog.ListChanges(catalog_request("eu"), timeout=5)

    assert [p.id for p in answer.promotions] == ["eu-only", "existing"]
    revisions = [p.revision for p in answer.promotions]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == len(revisions)
    assert answer.promotions[1].frozen
    assert (answer.revision, answer.more) == (newest, False)  # the us-only change is behind the cursor too

    first = await catalog.ListChanges(catalog_request("eu", page_size=1), timeout=5)
    assert ([p.id for p in first.promotions], first.revision, first.more) == (["eu-only"], revisions[0], True)
    rest = await catalog.ListChanges(catalog_request("eu", first.revision, page_size=1), timeout=5)
    assert ([p.id for p in rest.promotions], rest.revision, rest.more) == (["existing"], newest, False)

    caught_up = await catalog.ListChanges(catalog_request("eu", newest), timeout=5)
    assert (list(caught_up.promotions), caught_up.revision, caught_up.more) == ([], newest, False)


async def test_watch_sends_the_catch_up_then_each_change(
    center_world: World, catalog: center_grpc.CatalogAsyncStub
) -> None:
    await create(center_world.admin, promotion("us-only", regions=("us",)))
    caught_up_to = await newest_revision(center_world)
    call = catalog.Watch(catalog_request("eu"))
    try:
        catch_up = await asyncio.wait_for(call.read(), 5)
        assert isinstance(catch_up, center_pb.CatalogChanges)
        assert ([p.id for p in catch_up.promotions], catch_up.revision) == (["existing"], caught_up_to)

        await center_world.admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="existing", frozen=True), timeout=5)
        change = await asyncio.wait_for(next_change(call), 5)
    finally:
        call.cancel()

    assert [(p.id, p.frozen) for p in change.promotions] == [("existing", True)]
    assert change.promotions[0].revision > caught_up_to
    assert change.revision == change.promotions[0].revision


# SetEmergencyFreeze


async def test_emergency_freeze_rejects_a_too_long_region(
    center_world: World, catalog: center_grpc.CatalogAsyncStub
) -> None:
    before = await emergency_of(catalog)
    async with unchanged(center_world):
        await rejected(center_world.admin.SetEmergencyFreeze(freeze(ID_129), timeout=5), INVALID, "region", "129 bytes")

    assert await emergency_of(catalog) == before


@pytest.mark.parametrize(
    ("region", "fragments"),
    [
        pytest.param("EU", ("did you mean 'eu'", "case-sensitive"), id="another-case"),
        pytest.param(" eu", ("A-Z a-z 0-9",), id="a-space"),
        pytest.param("eu;us", ("no lists",), id="a-list"),
    ],
)
async def test_a_mistyped_region_is_refused_by_the_freeze_and_by_a_promotions_regions(
    granted: World, catalog: center_grpc.CatalogAsyncStub, region: str, fragments: tuple[str, ...]
) -> None:
    """A freeze of "EU" while agents of "eu" sell would say it froze a region, and freeze nothing."""
    before = await emergency_of(catalog)
    async with unchanged(granted):
        await rejected(granted.admin.SetEmergencyFreeze(freeze(region), timeout=5), INVALID, *fragments)
        create = center_pb.CreatePromotionRequest(promotion=promotion("mistyped", regions=(region, "us")))
        await rejected(granted.admin.CreatePromotion(create, timeout=5), INVALID, *fragments)

    assert await emergency_of(catalog) == before


async def test_emergency_freezing_a_region_twice_is_one_revision(
    center_world: World, catalog: center_grpc.CatalogAsyncStub
) -> None:
    before = await newest_revision(center_world)

    first = await center_world.admin.SetEmergencyFreeze(freeze("eu"), timeout=5)
    again = await center_world.admin.SetEmergencyFreeze(freeze("eu"), timeout=5)

    assert (list(first.regions), first.everywhere) == (["eu"], False)
    assert first.revision > before
    assert again == first
    assert (await catalog.ListChanges(catalog_request(), timeout=5)).revision == first.revision
    assert await emergency_of(catalog) == first


async def test_emergency_freeze_stops_grants_to_the_region_only_until_lifted(
    center_world: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await center_world.admin.SetEmergencyFreeze(freeze("eu"), timeout=5)

    async with unchanged(center_world):
        await rejected(
            allocation.Acquire(acquire("existing", amount=10, request_id="req-eu"), timeout=5),
            FAILED,
            "emergency freeze",
            "eu",
        )

    us = await allocation.Acquire(acquire("existing", amount=10, request_id="req-us", agent=identity("us")), timeout=5)
    assert (us.grant.region, us.grant.amount) == ("us", 10)

    lifted = await center_world.admin.SetEmergencyFreeze(freeze("eu", frozen=False), timeout=5)
    assert list(lifted.regions) == []
    eu = await allocation.Acquire(acquire("existing", amount=10, request_id="req-eu"), timeout=5)
    assert (eu.grant.region, eu.grant.amount) == ("eu", 10)


# AcquireOpenings


def openings(
    *items: center_pb.AcquireRequest, agent: center_pb.AgentIdentity | None = None
) -> center_pb.AcquireOpeningsRequest:
    return center_pb.AcquireOpeningsRequest(agent=agent or identity(), items=list(items))


def item(promotion_id: str = "promo", amount: int = 50, request_id: str = "open-1") -> center_pb.AcquireRequest:
    return center_pb.AcquireRequest(promotion_id=promotion_id, amount=amount, request_id=request_id)


BAD_OPENINGS = [
    pytest.param(openings(), ["items", "1 to 1000", "got 0"], id="no-items"),
    pytest.param(
        openings(*(item(f"p-{n}", request_id=f"open-{n}") for n in range(1001))),
        ["items", "1 to 1000", "got 1001"],
        id="1001-items",
    ),
    pytest.param(
        openings(item(request_id="open-1"), item("existing", request_id="open-2"), item(request_id="open-3")),
        ["items.promotion_id", "'promo'", "twice"],
        id="duplicate-promotion",
    ),
    pytest.param(openings(item(), agent=identity(region="")), ["agent.region", "is required"], id="region-empty"),
    pytest.param(openings(item(), agent=identity(region=ID_129)), ["agent.region", "129 bytes"], id="region-129"),
    pytest.param(
        openings(item(), agent=identity(incarnation="")), ["agent.incarnation", "is required"], id="incarnation-empty"
    ),
    pytest.param(
        openings(item(), agent=identity(incarnation=ID_129)), ["agent.incarnation", "129 bytes"], id="incarnation-129"
    ),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_OPENINGS)
async def test_acquire_openings_rejects_a_bad_request(
    granted: World,
    allocation: center_grpc.AllocationAsyncStub,
    request_: center_pb.AcquireOpeningsRequest,
    fragments: list[str],
) -> None:
    async with unchanged(granted):
        await rejected(allocation.AcquireOpenings(request_, timeout=5), INVALID, *fragments)


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_acquire_openings_rejects_a_bad_amount(
    granted: World, allocation: center_grpc.AllocationAsyncStub, amount: int
) -> None:
    request = openings(item("existing", request_id="open-0"), item(amount=amount))

    async with unchanged(granted):
        await rejected(allocation.AcquireOpenings(request, timeout=5), INVALID, "items.amount", str(amount))


@pytest.mark.parametrize(("request_id", "fragment"), BAD_IDS)
async def test_acquire_openings_rejects_a_bad_request_id(
    granted: World, allocation: center_grpc.AllocationAsyncStub, request_id: str, fragment: str
) -> None:
    request = openings(item("existing", request_id="open-0"), item(request_id=request_id))

    async with unchanged(granted):
        await rejected(allocation.AcquireOpenings(request, timeout=5), INVALID, "items.request_id", fragment)


@pytest.mark.parametrize(("promotion_id", "fragment"), BAD_IDS)
async def test_acquire_openings_rejects_a_bad_promotion_id(
    granted: World, allocation: center_grpc.AllocationAsyncStub, promotion_id: str, fragment: str
) -> None:
    request = openings(item("existing", request_id="open-0"), item(promotion_id))

    async with unchanged(granted):
        await rejected(allocation.AcquireOpenings(request, timeout=5), INVALID, "items.promotion_id", fragment)


async def test_acquire_openings_in_an_emergency_freeze_grants_nothing(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await granted.admin.SetEmergencyFreeze(freeze("eu"), timeout=5)

    async with unchanged(granted):
        await rejected(
            allocation.AcquireOpenings(openings(item(), item("existing", request_id="open-2")), timeout=5),
            FAILED,
            "emergency freeze",
        )


async def usage(world: World, promotion_id: str) -> center_pb.Usage:
    return await world.admin.GetUsage(center_pb.GetUsageRequest(promotion_id=promotion_id), timeout=5)


async def test_acquire_openings_answers_each_item_on_its_own(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    unallocated = (await usage(granted, "existing")).unallocated

    answer = await allocation.AcquireOpenings(
        openings(item("ghost", request_id="open-1"), item("existing", amount=50, request_id="open-2")), timeout=5
    )

    ghost, good = answer.outcomes
    assert ghost.promotion_id == "ghost"
    assert not ghost.HasField("grant")
    assert "'ghost'" in ghost.refusal
    assert good.promotion_id == "existing"
    assert good.refusal == ""
    assert (good.grant.promotion_id, good.grant.region, good.grant.amount) == ("existing", "eu", 50)
    assert good.grant.grant_id
    assert answer.lease_ttl_ms > 0
    after = await usage(granted, "existing")
    assert after.unallocated == unallocated - 50
    assert {r.region: r.granted for r in after.regions} == {"eu": 50, "us": 0}


async def test_a_retried_opening_batch_answers_the_same_grants(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = openings(item("existing", request_id="open-1"), item("promo", amount=30, request_id="open-2"))
    first = await allocation.AcquireOpenings(request, timeout=5)
    assert all(o.grant.grant_id for o in first.outcomes)

    async with unchanged(granted):
        again = await allocation.AcquireOpenings(request, timeout=5)

    assert [o.grant for o in again.outcomes] == [o.grant for o in first.outcomes]


async def test_an_opening_request_id_of_another_incarnation_is_refused(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await allocation.AcquireOpenings(openings(item("existing", request_id="open-1")), timeout=5)
    later = openings(item("existing", request_id="open-1"), agent=identity(incarnation=issued_incarnation(2)))

    async with unchanged(granted):
        answer = await allocation.AcquireOpenings(later, timeout=5)

    (outcome,) = answer.outcomes
    assert not outcome.HasField("grant")
    assert "'open-1'" in outcome.refusal
    assert "another incarnation" in outcome.refusal
