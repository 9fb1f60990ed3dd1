"""Bad input to the budget owners' calls: precise status, actionable message, nothing changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.errors import PENDING_METADATA_KEY, trailing
from quota_testing.bad_calls import (
    BAD_AMOUNTS,
    BAD_IDS,
    FAILED,
    ID_128,
    ID_129,
    INVALID,
    MAX_AMOUNT,
    NOT_FOUND,
    TOO_BIG,
    World,
    create,
    rejected,
    unchanged,
)
from quota_testing.support import now_ms, promotion

# CreatePromotion


def _without_start() -> center_pb.Promotion:
    message = promotion()
    message.ClearField("start_time")
    return message


def _without_end() -> center_pb.Promotion:
    message = promotion()
    message.ClearField("end_time")
    return message


_START = now_ms() + 3_600_000
"""An hour ahead: a window that ended before the call is refused."""
AMOUNT = center_pb.PROMOTION_KIND_AMOUNT


def _paced(pacing: int, hourly_cap: int) -> center_pb.Promotion:
    message = promotion()
    message.pacing = pacing  # type: ignore[assignment]
    message.hourly_cap = hourly_cap
    return message


def _offer(**fields: Any) -> center_pb.Promotion:
    message = promotion()
    for name, value in fields.items():
        setattr(message, name, value)
    return message


BAD_PROMOTIONS = [
    pytest.param(promotion(budget=0), ["budget", "0"], id="budget-zero"),
    pytest.param(promotion(budget=-5), ["budget", "-5"], id="budget-negative"),
    pytest.param(promotion(budget=TOO_BIG), ["budget", str(TOO_BIG)], id="budget-2**53"),
    pytest.param(promotion(""), ["promotion.id", "required"], id="id-empty"),
    pytest.param(promotion(ID_129), ["promotion.id", "129 bytes"], id="id-129-bytes"),
    pytest.param(promotion("é" * 65), ["promotion.id", "130 bytes"], id="id-65-chars-130-bytes"),
    pytest.param(promotion(kind=center_pb.PROMOTION_KIND_UNSPECIFIED), ["kind"], id="kind-unspecified"),
    pytest.param(promotion(kind=7), ["kind"], id="kind-unknown"),
    pytest.param(_without_start(), ["start_time"], id="no-start"),
    pytest.param(_without_end(), ["end_time"], id="no-end"),
    pytest.param(promotion(start_ms=_START, end_ms=_START - 1), ["end_time", "start_time"], id="end-before-start"),
    pytest.param(promotion(start_ms=_START, end_ms=_START), ["end_time", "start_time"], id="end-equals-start"),
    pytest.param(
        promotion(start_ms=now_ms() - 2 * 3_600_000, end_ms=now_ms() - 3_600_000),
        ["window ends", "before now", "its year?"],
        id="window-in-the-past",
    ),
    pytest.param(promotion(" spring"), ["' spring'", "starts or ends with a space"], id="id-leading-space"),
    pytest.param(promotion("spring\t"), ["starts or ends with a space", "control character"], id="id-tab"),
    pytest.param(promotion(regions=()), ["regions"], id="no-regions"),
    pytest.param(promotion(regions=("eu", "us", "eu")), ["regions", "twice", "eu"], id="duplicate-region"),
    pytest.param(promotion(regions=("eu", "")), ["region", "required"], id="region-empty"),
    pytest.param(promotion(regions=("eu", ID_129)), ["region", "129 bytes"], id="region-129-bytes"),
    pytest.param(promotion(currency="EUR"), ["COUNT", "currency", "EUR"], id="count-with-currency"),
    pytest.param(promotion(kind=AMOUNT), ["currency", "ISO 4217"], id="amount-without-currency"),
    pytest.param(promotion(kind=AMOUNT, currency="eur"), ["currency", "'eur'"], id="amount-lower-case"),
    pytest.param(promotion(kind=AMOUNT, currency="EURO"), ["currency", "'EURO'"], id="amount-four-letters"),
    pytest.param(promotion(kind=AMOUNT, currency="EU"), ["currency", "'EU'"], id="amount-two-letters"),
    pytest.param(promotion(kind=AMOUNT, currency="ÉUR"), ["currency", "'ÉUR'"], id="amount-not-ascii"),
    pytest.param(promotion(kind=AMOUNT, currency="123"), ["currency", "'123'"], id="amount-digits"),
    pytest.param(
        promotion(kind=AMOUNT, currency="E1R"),
        ["currency", "'E1R'"],
        id="amount-letter-digit-letter",
    ),
    pytest.param(promotion(kind=AMOUNT, currency="EUR "), ["currency", "'EUR '"], id="amount-padded"),
    pytest.param(promotion(per_user_limit=-1), ["per_user_limit", "-1"], id="negative-per-user-limit"),
    pytest.param(promotion(per_user_orders=-2), ["per_user_orders", "-2"], id="negative-per-user-orders"),
    pytest.param(_paced(center_pb.PACING_HOURLY_CAP, 0), ["hourly_cap", "PACING_HOURLY_CAP"], id="hourly-without-cap"),
    pytest.param(_paced(center_pb.PACING_LINEAR, 5), ["hourly_cap", "LINEAR"], id="cap-without-hourly"),
    pytest.param(_paced(center_pb.PACING_HOURLY_CAP, -1), ["hourly_cap", "-1"], id="negative-cap"),
    pytest.param(_paced(9, 0), ["pacing"], id="pacing-unknown"),
    pytest.param(_offer(face_value=-1), ["face_value", "-1"], id="negative-face-value"),
    pytest.param(_offer(face_value=TOO_BIG), ["face_value", str(TOO_BIG)], id="face-value-2**53"),
    pytest.param(_offer(min_spend=-100), ["min_spend", "-100"], id="negative-min-spend"),
    pytest.param(_offer(discount_bps=10_001), ["discount_bps", "10001", "basis points"], id="discount-above-100%"),
    pytest.param(_offer(discount_bps=-1), ["discount_bps", "-1"], id="negative-discount"),
    pytest.param(_offer(max_per_order=-3), ["max_per_order", "-3"], id="negative-max-per-order"),
    pytest.param(_offer(owner="x" * 2049), ["owner", "2049 bytes"], id="owner-2049-bytes"),
]


@pytest.mark.parametrize(("message", "fragments"), BAD_PROMOTIONS)
async def test_create_promotion_rejects_a_bad_field(
    center_world: World, message: center_pb.Promotion, fragments: list[str]
) -> None:
    async with unchanged(center_world):
        await rejected(create(center_world.admin, message), INVALID, *fragments)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(promotion(ID_128), id="id-128-bytes"),
        pytest.param(promotion("é" * 64), id="id-64-chars-128-bytes"),
        pytest.param(promotion(budget=MAX_AMOUNT), id="budget-2**53-1"),
        pytest.param(promotion(budget=1), id="budget-1"),
        pytest.param(promotion(regions=(ID_128,)), id="region-128-bytes"),
        pytest.param(promotion(start_ms=_START, end_ms=_START + 1), id="window-1ms"),
        pytest.param(promotion(kind=AMOUNT, currency="EUR"), id="amount-EUR"),
    ],
)
async def test_create_promotion_accepts_the_boundaries(
    admin: center_grpc.PromotionAdminAsyncStub, message: center_pb.Promotion
) -> None:
    created = await create(admin, message)

    assert created.id == message.id
    assert created.budget == message.budget
    assert list(created.regions) == list(message.regions)
    assert await admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id=message.id), timeout=5) == created


async def test_creating_an_existing_id_fails_and_keeps_the_original(center_world: World) -> None:
    imposter = promotion("existing", budget=7, regions=("us",), kind=AMOUNT, currency="USD")

    async with unchanged(center_world):
        await rejected(create(center_world.admin, imposter), grpc.StatusCode.ALREADY_EXISTS, "existing")

    kept = await center_world.admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id="existing"), timeout=5)
    assert (kept.budget, list(kept.regions), kept.kind, kept.currency) == (
        500,
        ["eu", "us"],
        center_pb.PROMOTION_KIND_COUNT,
        "",
    )


# Reads and admin calls by promotion id

AdminCall: TypeAlias = "Callable[[center_grpc.PromotionAdminAsyncStub, str], Awaitable[object]]"

ADMIN_CALLS: list[tuple[str, AdminCall]] = [
    ("GetPromotion", lambda a, p: a.GetPromotion(center_pb.GetPromotionRequest(promotion_id=p), timeout=5)),
    ("GetUsage", lambda a, p: a.GetUsage(center_pb.GetUsageRequest(promotion_id=p), timeout=5)),
    (
        "SetBudget",
        lambda a, p: a.SetBudget(center_pb.SetBudgetRequest(promotion_id=p, budget=10, expected_revision=1), timeout=5),
    ),
    ("SetFrozen", lambda a, p: a.SetFrozen(center_pb.SetFrozenRequest(promotion_id=p, frozen=True), timeout=5)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in ADMIN_CALLS])
async def test_admin_calls_on_an_unknown_promotion_are_not_found(center_world: World, call: AdminCall) -> None:
    async with unchanged(center_world):
        await rejected(call(center_world.admin, "ghost"), NOT_FOUND, "'ghost'")


@pytest.mark.parametrize(("promotion_id", "fragment"), BAD_IDS)
@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in ADMIN_CALLS])
async def test_admin_calls_reject_a_bad_promotion_id(
    center_world: World, call: AdminCall, promotion_id: str, fragment: str
) -> None:
    async with unchanged(center_world):
        await rejected(call(center_world.admin, promotion_id), INVALID, "promotion_id", fragment)


# SetBudget


def set_budget(budget: int, expected_revision: int, promotion_id: str = "promo") -> center_pb.SetBudgetRequest:
    return center_pb.SetBudgetRequest(promotion_id=promotion_id, budget=budget, expected_revision=expected_revision)


async def revision_of(world: World, promotion_id: str = "promo") -> int:
    request = center_pb.GetPromotionRequest(promotion_id=promotion_id)
    return (await world.admin.GetPromotion(request, timeout=5)).revision


@pytest.mark.parametrize("budget", BAD_AMOUNTS)
async def test_set_budget_rejects_a_bad_amount(granted: World, budget: int) -> None:
    revision = await revision_of(granted)
    async with unchanged(granted):
        await rejected(granted.admin.SetBudget(set_budget(budget, revision), timeout=5), INVALID, "budget", str(budget))


async def test_set_budget_below_what_regions_hold_names_the_figures(granted: World) -> None:
    revision = await revision_of(granted)
    async with unchanged(granted):
        await rejected(granted.admin.SetBudget(set_budget(99, revision), timeout=5), FAILED, "99", "100")

    lowest = await granted.admin.SetBudget(set_budget(100, revision), timeout=5)
    assert lowest.budget == 100
    assert lowest.revision > revision


async def test_set_budget_with_a_stale_revision_fails(granted: World) -> None:
    stale = await revision_of(granted)
    changed = await granted.admin.SetBudget(set_budget(2_000, stale), timeout=5)

    async with unchanged(granted):
        await rejected(
            granted.admin.SetBudget(set_budget(3_000, stale), timeout=5),
            FAILED,
            f"revision {changed.revision}",
            f"not {stale}",
        )

    current = await granted.admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id="promo"), timeout=5)
    assert (current.budget, current.revision) == (2_000, changed.revision)


async def test_set_budget_with_a_future_revision_fails(granted: World) -> None:
    revision = await revision_of(granted)
    async with unchanged(granted):
        await rejected(
            granted.admin.SetBudget(set_budget(3_000, revision + 5), timeout=5),
            FAILED,
            f"revision {revision}",
            str(revision + 5),
        )


@pytest.mark.parametrize("expected_revision", [0, -1])
async def test_set_budget_requires_the_revision_read(granted: World, expected_revision: int) -> None:
    async with unchanged(granted):
        await rejected(
            granted.admin.SetBudget(set_budget(3_000, expected_revision), timeout=5), INVALID, "expected_revision"
        )


async def test_set_budget_accepts_the_maximum(granted: World) -> None:
    # Fivefold at a time: the shipped guard rules hold a larger raise in one change for approval.
    budget, revision = 1_000, await revision_of(granted)
    while budget < MAX_AMOUNT:
        answer = await granted.admin.SetBudget(set_budget(min(MAX_AMOUNT, budget * 5), revision), timeout=5)
        budget, revision = answer.budget, answer.revision

    assert answer.budget == MAX_AMOUNT


async def test_a_raise_above_fivefold_is_held_and_changes_nothing(granted: World) -> None:
    async with unchanged(granted):
        error = await rejected(
            granted.admin.SetBudget(set_budget(MAX_AMOUNT, await revision_of(granted)), timeout=5),
            FAILED,
            "held for approval as pending change P-1",
            "budget-raised-fivefold",
        )
    assert trailing(error, PENDING_METADATA_KEY) == "P-1"


async def test_a_creator_cannot_name_another_owner(center_world: World) -> None:
    message = promotion("claimed")
    message.owner = "spiffe://quota/owner/mallory"

    created = await create(center_world.admin, message)

    assert created.owner == ""  # plaintext: no identity, so no owner; with TLS it is the caller's own
