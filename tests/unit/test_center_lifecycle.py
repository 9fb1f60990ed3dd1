"""UpdatePromotion and EndPromotion at the center: judged by the guard rules like SetBudget (a held change reaches
no region until approved, an expired one never), one catalog revision each with its audit record, regions
removed hearing of it and giving back, an ended promotion granting nothing and taking back what regions hold."""

from __future__ import annotations

import pytest

from quota_center.center import Center
from quota_center.ledger import GrantRecord
from quota_center.lifecycle import Update
from quota_center.trail import By
from quota_common.clock import FakeClock
from quota_common.errors import FailedPrecondition, Held, PermissionDenied
from quota_common.identity import Role, person
from quota_common.model import Kind, Promotion, Report
from quota_testing.support import ALICE, BOB, PENDING_TTL_S

DAVE = By(person("quota", Role.OWNER, "dave"))
HOUR_MS = 3_600_000


async def sale(center: Center, clock: FakeClock, regions: tuple[str, ...] = ("eu", "us")) -> Promotion:
    now = clock.wall_ms()
    promotion = Promotion(
        "sale", Kind.COUNT, "", 1000, now, now + 24 * HOUR_MS, regions, face_value=100, per_user_limit=2
    )
    return await center.create_promotion(promotion, ALICE)


async def holding(center: Center, region: str) -> tuple[str, GrantRecord]:
    """`region` joins and takes 40 of the sale: its incarnation and the grant."""
    incarnation = center.join(region)
    return incarnation, (await center.acquire(region, incarnation, "sale", 40, "r-1", 60)).grant


def seen_by(center: Center, region: str, after: int) -> list[Promotion]:
    return center.catalog_page(region, after, 100).promotions


async def calls(center: Center) -> list[str]:
    return [record.fields()["call"] for record in await center.audit_records(0, 100)]


async def test_a_change_is_one_revision_every_region_hears_with_an_audit_record(
    center: Center, clock: FakeClock
) -> None:
    created = await sale(center, clock)

    updated = await center.update_promotion("sale", Update({"max_per_order": 3}, created.revision), ALICE)

    assert (updated.max_per_order, updated.revision) == (3, created.revision + 1)
    assert seen_by(center, "eu", created.revision) == [updated]
    assert seen_by(center, "us", created.revision) == [updated]
    assert await calls(center) == ["CreatePromotion", "UpdatePromotion"]
    assert await center.update_promotion("sale", Update({"max_per_order": 3}, updated.revision), ALICE) == updated
    assert await calls(center) == ["CreatePromotion", "UpdatePromotion"]  # a change of nothing is not recorded


async def test_setting_the_budget_a_promotion_has_is_no_revision_and_no_record(
    center: Center, clock: FakeClock
) -> None:
    """A new revision would make every other caller's expected revision stale, for nothing."""
    created = await sale(center, clock)

    again = await center.set_budget("sale", created.budget, created.revision, ALICE)
    raised = await center.set_budget("sale", created.budget + 1, created.revision, ALICE)

    assert again == created
    assert (raised.budget, raised.revision) == (created.budget + 1, created.revision + 1)
    assert await calls(center) == ["CreatePromotion", "SetBudget"]


async def test_only_the_owner_changes_or_ends_it(center: Center, clock: FakeClock) -> None:
    created = await sale(center, clock)

    with pytest.raises(PermissionDenied, match="UpdatePromotion on promotion sale"):
        await center.update_promotion("sale", Update({"max_per_order": 3}, created.revision), DAVE)
    with pytest.raises(PermissionDenied, match="EndPromotion on promotion sale"):
        await center.end_promotion("sale", DAVE)
    assert center.promotion("sale") == created


async def test_a_held_update_reaches_no_region_until_approved_then_applies_as_asked(
    center: Center, clock: FakeClock
) -> None:
    created = await sale(center, clock)
    risky = Update({"per_user_limit": 0, "min_spend": 0}, created.revision)  # no threshold, no user limit

    with pytest.raises(Held) as held:
        await center.update_promotion("sale", risky, ALICE)

    assert "zero-threshold-no-user-limit" in held.value.message
    assert center.promotion("sale") == created
    assert seen_by(center, "eu", created.revision) == []
    with pytest.raises(PermissionDenied):
        await center.approve(held.value.pending_id, ALICE)

    decided, applied = await center.approve(held.value.pending_id, BOB)

    assert decided.state == "approved"
    assert applied.per_user_limit == 0
    assert seen_by(center, "eu", created.revision) == [applied]
    assert await calls(center) == ["CreatePromotion", "HoldForApproval", "UpdatePromotion", "ApprovePending"]
    records = await center.audit_records(0, 100)
    assert any("zero-threshold-no-user-limit" in finding for finding in records[2].fields()["guard"])


async def test_an_expired_held_update_never_applies(center: Center, clock: FakeClock) -> None:
    created = await sale(center, clock)
    with pytest.raises(Held) as held:
        await center.update_promotion("sale", Update({"per_user_limit": 0}, created.revision), ALICE)
    clock.advance(PENDING_TTL_S)

    with pytest.raises(FailedPrecondition, match="is expired"):
        await center.approve(held.value.pending_id, BOB)

    assert center.promotion("sale") == created
    assert seen_by(center, "eu", created.revision) == []


async def test_a_stale_revision_is_refused_not_held(center: Center, clock: FakeClock) -> None:
    created = await sale(center, clock)

    with pytest.raises(FailedPrecondition, match="read it again") as refused:
        await center.update_promotion("sale", Update({"per_user_limit": 0}, created.revision - 1), ALICE)

    assert not isinstance(refused.value, Held)
    assert center.pending() == []


async def test_a_removed_region_hears_of_it_reports_and_gives_back_what_it_holds(
    center: Center, clock: FakeClock
) -> None:
    created = await sale(center, clock)
    us, grant = await holding(center, "us")

    removed = await center.update_promotion("sale", Update({"regions": ("eu",)}, created.revision), ALICE)

    assert seen_by(center, "us", created.revision) == [removed]
    [directive] = await center.renew("us", us, {"sale": Report(grant.amount, 0, 5, 0, 60)})
    assert not isinstance(directive, Exception)
    assert directive.reclaim == grant.amount - 5
    unallocated = await center.return_quota("us", us, "sale", Report(grant.amount, grant.amount - 5, 5, 0))
    assert unallocated == 1000 - 5
    with pytest.raises(PermissionDenied, match="may not spend"):
        await center.acquire("us", us, "sale", 10, "r-2", 60)


async def test_an_ended_promotion_grants_nothing_and_regions_are_asked_for_everything(
    center: Center, clock: FakeClock
) -> None:
    created = await sale(center, clock)
    eu, grant = await holding(center, "eu")
    clock.advance(60)

    ended = await center.end_promotion("sale", ALICE)

    assert (ended.end_ms, ended.revision) == (clock.wall_ms(), created.revision + 1)
    assert seen_by(center, "eu", created.revision) == [ended]
    assert await center.end_promotion("sale", ALICE) == ended  # ending twice is no new revision
    with pytest.raises(FailedPrecondition, match="ended at"):
        await center.acquire("eu", eu, "sale", 10, "r-2", 60)
    [directive] = await center.renew("eu", eu, {"sale": Report(grant.amount, 0, 10, 3, 0)})
    assert not isinstance(directive, Exception)
    assert directive.reclaim == grant.amount - 7
    assert directive.exhausted
    with pytest.raises(FailedPrecondition, match="ended promotion is not changed"):
        await center.update_promotion("sale", Update({"per_user_limit": 1}, ended.revision), ALICE)
    with pytest.raises(FailedPrecondition, match="ended promotion is not changed"):
        await center.set_budget("sale", 400, ended.revision, ALICE)  # it would only rewrite the statement
    assert await calls(center) == ["CreatePromotion", "EndPromotion"]


async def test_a_create_cannot_make_a_promotion_archived_or_frozen(center: Center, clock: FakeClock) -> None:
    now = clock.wall_ms()
    asked = Promotion("born-archived", Kind.COUNT, "", 100, now, now + HOUR_MS, ("eu",), frozen=True, archived=True)

    created = await center.create_promotion(asked, ALICE)

    assert (created.archived, created.frozen) == (False, False)
    assert seen_by(center, "eu", 0) == [created]
