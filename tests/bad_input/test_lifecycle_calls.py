"""Bad input to UpdatePromotion and EndPromotion: precise status, a message naming the field and what to do
instead, and nothing changed."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_common.errors import PENDING_METADATA_KEY, trailing
from quota_testing.bad_calls import BAD_IDS, FAILED, INVALID, NOT_FOUND, TOO_BIG, World, rejected, unchanged
from quota_testing.support import HOUR_MS, now_ms, timestamp


async def _update(world: World, paths: list[str], revision: int | None = None, **fields: Any) -> center_pb.Promotion:
    if revision is None:
        revision = (await world.admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id="promo"))).revision
    request = center_pb.UpdatePromotionRequest(
        promotion=center_pb.Promotion(id="promo", **fields),
        update_mask=FieldMask(paths=paths),
        expected_revision=revision,
    )
    return await world.admin.UpdatePromotion(request, timeout=5)


@pytest.mark.parametrize(
    ("paths", "fragments"),
    [
        pytest.param([], ("update_mask names no field", "end_time"), id="empty-mask"),
        pytest.param(["budget"], ("budget", "SetBudget"), id="budget"),
        pytest.param(["frozen"], ("frozen", "SetFrozen"), id="frozen"),
        pytest.param(["archived"], ("archived", "ArchivePromotion"), id="archived"),
        pytest.param(["revision"], ("revision", "expected_revision"), id="revision"),
        pytest.param(["id"], ("id", "create a new promotion"), id="id"),
        pytest.param(["kind"], ("kind", "create a new promotion"), id="kind"),
        pytest.param(["currency"], ("currency",), id="currency"),
        pytest.param(["pacing"], ("pacing",), id="pacing"),
        pytest.param(["hourly_cap"], ("hourly_cap",), id="hourly-cap"),
        pytest.param(["owner"], ("owner",), id="owner"),
        pytest.param(["colour"], ("'colour'", "not a field UpdatePromotion changes"), id="unknown"),
        pytest.param(["end_time", "end_time"], ("end_time twice",), id="twice"),
        pytest.param(["start_time"], ("promotion.start_time is not set",), id="unset-time"),
    ],
)
async def test_a_mask_naming_what_update_does_not_change_is_refused(
    granted: World, paths: list[str], fragments: tuple[str, ...]
) -> None:
    async with unchanged(granted):
        await rejected(_update(granted, paths, budget=5), INVALID, *fragments)


@pytest.mark.parametrize(
    ("paths", "fields", "fragment"),
    [
        pytest.param(["regions"], {"regions": []}, "at least one region", id="no-region"),
        pytest.param(["regions"], {"regions": ["eu", "eu"]}, "appears twice", id="region-twice"),
        pytest.param(["regions"], {"regions": ["x" * 129]}, "129 bytes", id="region-129-bytes"),
        pytest.param(["discount_bps"], {"discount_bps": 10_001}, "basis points", id="discount-bps"),
        pytest.param(["floor_bps"], {"floor_bps": -1}, "floor_bps", id="floor-bps"),
        pytest.param(["face_value"], {"face_value": TOO_BIG}, "face_value", id="face-value"),
        pytest.param(["per_user_limit"], {"per_user_limit": -1}, "per_user_limit", id="user-limit"),
        pytest.param(["max_per_order"], {"max_per_order": -1}, "max_per_order", id="per-order"),
    ],
)
async def test_a_bad_value_is_refused_naming_the_field(
    granted: World, paths: list[str], fields: dict[str, Any], fragment: str
) -> None:
    async with unchanged(granted):
        await rejected(_update(granted, paths, **fields), INVALID, fragment)


@pytest.mark.parametrize(
    ("paths", "fields", "fragment"),
    [
        pytest.param(["end_time"], {"end_time": timestamp(now_ms() - 1)}, "end the promotion", id="end-in-past"),
        pytest.param(["start_time"], {"start_time": timestamp(now_ms())}, "running sale stays", id="move-start"),
    ],
)
async def test_a_window_against_the_rules_is_refused(
    granted: World, paths: list[str], fields: dict[str, Any], fragment: str
) -> None:
    async with unchanged(granted):
        await rejected(_update(granted, paths, **fields), FAILED, fragment)


@pytest.mark.parametrize("revision", [0, -1])
async def test_update_requires_the_revision_read(granted: World, revision: int) -> None:
    async with unchanged(granted):
        await rejected(_update(granted, ["per_user_limit"], revision, per_user_limit=1), INVALID, "expected_revision")


async def test_a_stale_revision_is_refused(granted: World) -> None:
    async with unchanged(granted):
        await rejected(_update(granted, ["per_user_limit"], 1, per_user_limit=1), FAILED, "read it again")


def _limit(promotion_id: str) -> center_pb.UpdatePromotionRequest:
    mask = FieldMask(paths=["per_user_limit"])
    return center_pb.UpdatePromotionRequest(
        promotion=center_pb.Promotion(id=promotion_id), update_mask=mask, expected_revision=1
    )


@pytest.mark.parametrize(("promotion_id", "fragment"), BAD_IDS)
async def test_update_and_end_need_a_valid_promotion_id(granted: World, promotion_id: str, fragment: str) -> None:
    async with unchanged(granted):
        await rejected(
            granted.admin.UpdatePromotion(_limit(promotion_id), timeout=5), INVALID, "promotion.id", fragment
        )
        ending = center_pb.EndPromotionRequest(promotion_id=promotion_id)
        await rejected(granted.admin.EndPromotion(ending, timeout=5), INVALID, "promotion_id", fragment)


async def test_unknown_promotions_are_not_found(granted: World) -> None:
    async with unchanged(granted):
        await rejected(granted.admin.UpdatePromotion(_limit("nope"), timeout=5), NOT_FOUND, "'nope'")
        await rejected(granted.admin.EndPromotion(center_pb.EndPromotionRequest(promotion_id="nope")), NOT_FOUND)


async def test_a_risky_update_is_held_and_changes_nothing(granted: World) -> None:
    async with unchanged(granted):
        error = await rejected(
            _update(granted, ["face_value"], face_value=10_000), FAILED, "held for approval as pending change P-1"
        )
    assert trailing(error, PENDING_METADATA_KEY) == "P-1"


async def test_an_ended_promotion_refuses_updates_and_ends_once(granted: World) -> None:
    ended = await granted.admin.EndPromotion(center_pb.EndPromotionRequest(promotion_id="promo"), timeout=5)

    async with unchanged(granted):
        again = await granted.admin.EndPromotion(center_pb.EndPromotionRequest(promotion_id="promo"), timeout=5)
        await rejected(
            _update(granted, ["end_time"], end_time=timestamp(now_ms() + HOUR_MS)), FAILED, "not changed or reopened"
        )
    assert again == ended


async def test_an_update_naming_a_known_region_in_another_case_is_refused(granted: World) -> None:
    """As a freeze or a create: "EU" where "eu" holds quota would move the promotion away from its region."""
    async with unchanged(granted):
        await rejected(_update(granted, ["regions"], regions=["EU"]), INVALID, "did you mean 'eu'")
