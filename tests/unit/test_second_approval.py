"""Guard rules at the center's door and the second approval: the seeds' incidents held before any money
goes out, decided only by another person, never applied once expired or rejected, all of it audited."""

from __future__ import annotations

from importlib.resources import files

import pytest

from quota_center import approvals
from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.guard import load_rules
from quota_center.trail import By
from quota_common.clock import FakeClock
from quota_common.errors import AlreadyExists, FailedPrecondition, Held, NotFound, PermissionDenied
from quota_common.identity import Role, person
from quota_common.model import Kind, Promotion
from quota_testing.memory_store import MemoryStore
from quota_testing.support import ALICE, BOB, PENDING_TTL_S

HOUR_MS = 3_600_000
TTL_S = PENDING_TTL_S


def coupon(promotion_id: str, clock: FakeClock, **values: int) -> Promotion:
    now = clock.wall_ms()
    return Promotion(promotion_id, Kind.COUNT, "", 100_000, now, now + 24 * HOUR_MS, ("eu",), **values)  # type: ignore[arg-type]


async def trail(center: Center) -> list[tuple[str, str, str]]:
    records = await center.audit_records(0, 100)
    return [(r.fields()["call"], r.fields()["actor"], r.fields()["promotion_id"]) for r in records]


async def test_a_zero_threshold_100_yuan_coupon_without_a_user_limit_waits_for_another_person(
    center: Center, clock: FakeClock
) -> None:
    with pytest.raises(Held) as held:
        await center.create_promotion(coupon("free-100", clock, face_value=10_000), ALICE)

    assert held.value.pending_id == "P-1"
    assert "zero-threshold-high-face-value" in held.value.message
    assert "zero-threshold-no-user-limit" in held.value.message
    with pytest.raises(NotFound):
        center.promotion("free-100")
    with pytest.raises(AlreadyExists, match="waiting for approval as pending change P-1"):
        await center.create_promotion(coupon("free-100", clock, face_value=100), ALICE)
    with pytest.raises(PermissionDenied, match="may not decide it: a second person must"):
        await center.approve("P-1", ALICE)
    with pytest.raises(PermissionDenied, match="needs an identity"):
        await center.approve("P-1", By())

    decided, created = await center.approve("P-1", BOB)

    assert (decided.state, decided.decided_by) == ("approved", BOB.actor)
    assert created.owner == ALICE.actor  # the one who asked owns it, not the approver
    assert center.promotion("free-100").face_value == 10_000
    assert await trail(center) == [
        ("HoldForApproval", ALICE.actor, "free-100"),
        ("CreatePromotion", BOB.actor, "free-100"),
        ("ApprovePending", BOB.actor, "free-100"),
    ]
    records = await center.audit_records(0, 100)
    assert any("zero-threshold-high-face-value" in finding for finding in records[1].fields()["guard"])


async def test_spend_200_get_4000_off_is_held_naming_the_rule(center: Center, clock: FakeClock) -> None:
    swapped = coupon("swapped", clock, face_value=400_000, min_spend=20_000, per_user_limit=1)

    with pytest.raises(Held) as held:
        await center.create_promotion(swapped, ALICE)

    assert "discount-above-half-the-threshold" in held.value.message
    assert "zero-threshold" not in held.value.message


async def test_a_sane_coupon_is_created_at_once(center: Center, clock: FakeClock) -> None:
    sane = coupon("sane", clock, face_value=20_000, min_spend=400_000, per_user_limit=1)

    created = await center.create_promotion(sane, ALICE)

    assert created.owner == ALICE.actor
    assert center.pending() == []


async def test_an_expired_change_never_applies(center: Center, clock: FakeClock) -> None:
    with pytest.raises(Held):
        await center.create_promotion(coupon("late", clock, face_value=10_000), ALICE)
    clock.advance(TTL_S)

    with pytest.raises(FailedPrecondition, match="P-1 is expired"):
        await center.approve("P-1", BOB)

    assert [state for _, state in center.pending()] == ["expired"]
    with pytest.raises(NotFound):
        center.promotion("late")
    created = await center.create_promotion(coupon("late", clock, face_value=100, per_user_limit=1), ALICE)
    assert created.budget == 100_000  # an expired hold no longer reserves the id


async def test_a_rejected_change_never_applies(center: Center, clock: FakeClock) -> None:
    with pytest.raises(Held):
        await center.create_promotion(coupon("no", clock, face_value=10_000), ALICE)

    rejected = await center.reject("P-1", BOB, "typo in the face value")

    assert (rejected.state, rejected.reason) == ("rejected", "typo in the face value")
    with pytest.raises(FailedPrecondition, match="P-1 is rejected"):
        await center.approve("P-1", BOB)
    with pytest.raises(NotFound):
        center.promotion("no")


async def test_a_held_budget_raise_applies_only_on_the_revision_it_was_asked_on(
    center: Center, clock: FakeClock
) -> None:
    created = await center.create_promotion(coupon("raise", clock, face_value=100, per_user_limit=1), ALICE)
    with pytest.raises(Held):
        await center.set_budget("raise", created.budget * 10, created.revision, ALICE)
    assert center.promotion("raise").budget == created.budget
    with pytest.raises(Held):
        await center.set_budget("raise", created.budget * 20, created.revision, ALICE)
    lowered = await center.set_budget("raise", created.budget - 1, created.revision, ALICE)

    with pytest.raises(FailedPrecondition):
        await center.approve("P-1", BOB)  # asked on a revision the promotion moved past
    assert center.promotion("raise").budget == lowered.budget


async def test_a_decided_change_cannot_be_decided_again(center: Center, clock: FakeClock) -> None:
    with pytest.raises(Held):
        await center.create_promotion(coupon("once", clock, face_value=10_000), ALICE)
    await center.approve("P-1", BOB)

    for decide in (center.approve("P-1", BOB), center.reject("P-1", BOB, "late")):
        with pytest.raises(FailedPrecondition, match="P-1 is approved"):
            await decide
    assert center.promotion("once").revision == 1  # applied once


async def test_a_flood_of_held_changes_is_refused_past_what_the_book_holds(
    center: Center, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(approvals, "MAX_HELD", 3)
    for number in range(3):
        with pytest.raises(Held):
            await center.create_promotion(coupon(f"flood-{number}", clock, face_value=10_000), ALICE)
    before = await center.audit_records(0, 100)

    with pytest.raises(FailedPrecondition, match="3 changes wait for approval already"):
        await center.create_promotion(coupon("flood-3", clock, face_value=10_000), ALICE)

    assert len(center.pending()) == 3
    assert await center.audit_records(0, 100) == before


async def test_an_owner_is_held_to_their_own_limit_from_the_rules_file(clock: FakeClock) -> None:
    rules = load_rules(
        (files("quota_center") / "guard_rules.toml").read_text()
        + f'\n[owner_limits]\ndefault = 1_000_000\n"{ALICE.actor}" = 200_000_000\n',
        "rules.toml",
    )
    center = Center(MemoryStore(), clock, CenterSettings(pending_ttl_s=TTL_S), rules=lambda: rules)
    await center.start()
    carol = By(person("quota", Role.OWNER, "carol"))
    worth = {"face_value": 1_000, "min_spend": 10_000, "per_user_limit": 1}  # 100,000 x ¥10 = ¥1,000,000

    assert (await center.create_promotion(coupon("alices", clock, **worth), ALICE)).budget == 100_000
    with pytest.raises(Held, match="budget-above-owner-limit"):
        await center.create_promotion(coupon("carols", clock, **worth), carol)
