"""Large but valid configurations: every answer stays below gRPC's 4 MiB, listings page by size,
and nothing unbounded (regions per promotion, regions in the emergency switch) is accepted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from quota_center.center_renewals import MAX_NOTICES, Directive
from quota_center.convert import REFUSAL_BYTES, RENEWAL_GRANTS, directives_to_pb
from quota_center.ledger import RECENT_GRANTS_KEPT
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_center.wire import emergency_to_pb
from quota_common.errors import InvalidArgument, QuotaError
from quota_common.model import EmergencyFreeze, Kind, Promotion
from quota_common.validation import MAX_RENEWAL
from quota_testing.bad_calls import FAILED, INVALID, MAX_AMOUNT, World, create, rejected, unchanged
from quota_testing.inprocess import ServedCenter
from quota_testing.support import promotion

MAX_REGIONS = 1000
# Promotions of 1000 regions of 128 bytes each are about 130 KB: 34 of them pass 4 MiB together.
MAXIMAL_PROMOTIONS = 34


def region_name(index: int) -> str:
    return f"region-{index:04d}-".ljust(128, "x")


REGION = region_name(0)


def maximal(promotion_id: str) -> center_pb.Promotion:
    return promotion(promotion_id, regions=tuple(region_name(i) for i in range(MAX_REGIONS)))


@pytest.fixture
async def catalog(center: ServedCenter) -> AsyncIterator[center_grpc.CatalogAsyncStub]:
    async with grpc.aio.insecure_channel(center.address) as channel:
        yield center_grpc.CatalogStub(channel)


@pytest.fixture
async def maximal_world(admin: center_grpc.PromotionAdminAsyncStub) -> list[str]:
    """MAXIMAL_PROMOTIONS promotions at the largest allowed size; their ids, ascending."""
    ids = [f"big-{index:02d}" for index in range(MAXIMAL_PROMOTIONS)]
    for promotion_id in ids:
        await create(admin, maximal(promotion_id))
    return ids


@pytest.mark.parametrize("count", [MAX_REGIONS + 1, 28_500])
async def test_a_promotion_naming_more_than_the_maximum_of_regions_is_refused(center_world: World, count: int) -> None:
    message = promotion("huge", regions=tuple(f"r{i}" for i in range(count)))

    async with unchanged(center_world):
        await rejected(create(center_world.admin, message), INVALID, "regions", str(count), "at most 1000")


async def test_a_promotion_at_the_maximum_is_served_whole_by_every_call(
    admin: center_grpc.PromotionAdminAsyncStub, catalog: center_grpc.CatalogAsyncStub
) -> None:
    created = await create(admin, maximal("big"))

    usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="big"), timeout=5)
    changes = await catalog.ListChanges(center_pb.CatalogRequest(region=REGION), timeout=5)

    assert len(created.regions) == MAX_REGIONS
    assert usage.promotion == created
    assert [r.region for r in usage.regions] == sorted(created.regions)
    assert list(changes.promotions) == [created]


async def test_list_changes_pages_by_size_and_loses_no_promotion(
    maximal_world: list[str], catalog: center_grpc.CatalogAsyncStub
) -> None:
    seen: list[center_pb.Promotion] = []
    cursor, pages, more = 0, 0, True
    while more:
        page = await catalog.ListChanges(center_pb.CatalogRequest(region=REGION, since_revision=cursor), timeout=5)
        assert page.promotions, "every page of the catch-up makes progress"
        if page.more:
            assert page.revision == page.promotions[-1].revision, "the cursor stops at the last promotion sent"
        seen.extend(page.promotions)
        cursor, pages, more = page.revision, pages + 1, page.more

    assert pages > 1
    assert [p.id for p in seen] == maximal_world  # created in id order, so revision order is id order
    assert len({p.revision for p in seen}) == len(seen)


async def test_watch_catches_up_by_size_and_loses_no_promotion(
    maximal_world: list[str], catalog: center_grpc.CatalogAsyncStub
) -> None:
    call = catalog.Watch(center_pb.CatalogRequest(region=REGION), timeout=30)
    seen: list[str] = []
    try:
        while len(seen) < len(maximal_world):
            message = await call.read()
            assert isinstance(message, center_pb.CatalogChanges), "the center ended the catalog stream"
            seen.extend(p.id for p in message.promotions)
    finally:
        call.cancel()

    assert seen == maximal_world


async def test_list_promotions_pages_by_size_until_the_last(
    maximal_world: list[str], admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await admin.ListPromotions(center_pb.ListPromotionsRequest(page_token=token), timeout=5)
        seen.extend(p.id for p in page.promotions)
        token, pages = page.next_page_token, pages + 1
        if not token:
            break

    assert pages > 1
    assert seen == maximal_world


async def test_list_promotions_pages_by_count(center_world: World) -> None:
    for promotion_id in ("a", "b", "c"):
        await create(center_world.admin, promotion(promotion_id))
    seen: list[list[str]] = []
    token = ""
    while True:
        request = center_pb.ListPromotionsRequest(page_size=2, page_token=token)
        page = await center_world.admin.ListPromotions(request, timeout=5)
        seen.append([p.id for p in page.promotions])
        token = page.next_page_token
        if not token:
            break

    assert seen == [["a", "b"], ["c", "existing"]]


@pytest.mark.parametrize(
    ("request_", "fragments"),
    [
        pytest.param(center_pb.ListPromotionsRequest(page_size=-1), ["page_size", "5000", "-1"], id="size-negative"),
        pytest.param(center_pb.ListPromotionsRequest(page_size=5001), ["page_size", "5000", "5001"], id="size-5001"),
        pytest.param(center_pb.ListPromotionsRequest(page_token="not a token!"), ["page_token"], id="token-garbage"),
        pytest.param(center_pb.ListPromotionsRequest(page_token="//8="), ["page_token"], id="token-not-utf8"),
        pytest.param(center_pb.ListPromotionsRequest(page_token="a" * 400), ["page_token"], id="token-too-long"),
    ],
)
async def test_list_promotions_rejects_a_bad_page_request(
    center_world: World, request_: center_pb.ListPromotionsRequest, fragments: list[str]
) -> None:
    await rejected(center_world.admin.ListPromotions(request_, timeout=5), INVALID, *fragments)


async def test_the_emergency_switch_holds_a_bounded_number_of_regions(
    center_world: World, catalog: center_grpc.CatalogAsyncStub
) -> None:
    def freeze(region: str, frozen: bool = True) -> center_pb.SetEmergencyFreezeRequest:
        return center_pb.SetEmergencyFreezeRequest(region=region, frozen=frozen)

    for index in range(MAX_REGIONS):
        await center_world.admin.SetEmergencyFreeze(freeze(region_name(index)), timeout=5)

    await rejected(
        center_world.admin.SetEmergencyFreeze(freeze("one-too-many"), timeout=5), FAILED, "1000", "every region"
    )
    await center_world.admin.SetEmergencyFreeze(freeze(region_name(0), frozen=False), timeout=5)
    switch = await center_world.admin.SetEmergencyFreeze(freeze("one-too-many"), timeout=5)
    everywhere = await center_world.admin.SetEmergencyFreeze(freeze(""), timeout=5)

    assert len(switch.regions) == MAX_REGIONS
    assert region_name(0) not in switch.regions
    assert "one-too-many" in switch.regions
    assert everywhere.everywhere
    assert (await catalog.ListChanges(center_pb.CatalogRequest(region="eu"), timeout=5)).emergency == everywhere


def test_the_answer_to_a_maximal_renewal_stays_far_below_4_mib() -> None:
    """The largest Renew answer there is: MAX_RENEWAL promotions of 128-byte ids, the first ones each
    resending every grant it keeps (ids of 128 bytes too), the rest refused at length, MAX_NOTICES notices
    of the region lease, and an emergency switch of MAX_REGIONS regions. Unbounded, this was 10k refusals or
    32k grants: far past 4 MiB."""
    promotion_ids = [f"promo-{index:05d}-".ljust(128, "x") for index in range(MAX_RENEWAL)]
    resending = -(-RENEWAL_GRANTS // RECENT_GRANTS_KEPT)
    answers: list[tuple[str, Directive | QuotaError]] = []
    for index, promotion_id in enumerate(promotion_ids):
        if index < resending:
            promotion = Promotion(promotion_id, Kind.COUNT, "", MAX_AMOUNT, 0, 1, (REGION,), True, 2**62)
            grants = [(uuid.uuid4().hex, MAX_AMOUNT)] * RECENT_GRANTS_KEPT
            answers.append((promotion_id, Directive(promotion, MAX_AMOUNT, grants, exhausted=True)))
        else:
            answers.append((promotion_id, InvalidArgument(f"region {REGION} reports {'9' * 19} " * 100)))
    switch = EmergencyFreeze(True, frozenset(region_name(index) for index in range(MAX_REGIONS)), 2**62)

    noticed = [
        Promotion(f"noticed-{index:05d}-".ljust(128, "x"), Kind.COUNT, "", MAX_AMOUNT, 0, 1, (REGION,), True, 2**62)
        for index in range(MAX_NOTICES)
    ]
    notices = [(promotion.id, Directive(promotion, MAX_AMOUNT, [], exhausted=True)) for promotion in noticed]

    answer = center_pb.RenewResponse(
        lease_ttl_ms=2**62,
        directives=directives_to_pb(REGION, answers),
        emergency=emergency_to_pb(switch),
        region_lease_ttl_ms=2**62,
        notices=directives_to_pb(REGION, notices),
    )

    assert (len(answer.directives), len(answer.notices)) == (MAX_RENEWAL, MAX_NOTICES)
    assert sum(len(directive.unapplied_grants) for directive in answer.directives) == RENEWAL_GRANTS
    assert max(len(directive.refusal.encode()) for directive in answer.directives) < REFUSAL_BYTES + 64
    assert answer.ByteSize() < 4 * 1024 * 1024 // 3, f"{answer.ByteSize()} bytes"
