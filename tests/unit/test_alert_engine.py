"""The center's alert engine over an in-memory store on a fake clock: an incident raised once and frozen by
the center itself (audited under the alert's id), a person's answer audited, the book kept across a restart."""

from __future__ import annotations

import pytest

from quota_center.alert_book import Cause
from quota_center.center import Center
from quota_center.trail import By
from quota_common.clock import FakeClock
from quota_common.errors import FailedPrecondition, NotFound, PermissionDenied
from quota_common.identity import Role, person
from quota_common.model import Kind, Promotion, Report
from quota_testing.memory_store import MemoryStore

ALICE = By(person("quota", Role.OWNER, "alice"))
BOB = By(person("quota", Role.APPROVER, "bob"))
DAY_MS = 24 * 3_600_000


async def started(store: MemoryStore, clock: FakeClock) -> Center:
    center = Center(store, clock)
    await center.start()
    return center


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def free_coupon(center: Center, clock: FakeClock) -> Promotion:
    """The incident: ¥100 off everything, no threshold, no per-user limit, approved anyway by a second person."""
    now = clock.wall_ms()
    promotion = Promotion("free-100", Kind.COUNT, "", 100_000, now, now + 30 * DAY_MS, ("eu", "us"), face_value=10_000)
    with pytest.raises(FailedPrecondition):
        await center.create_promotion(promotion, ALICE)
    _, created = await center.approve("P-1", BOB)
    return created


async def sell(center: Center, region: str, incarnation: str, units: int) -> None:
    await center.acquire(region, incarnation, "free-100", units, f"{region}-{units}", 60)
    await center.renew(region, incarnation, {"free-100": Report(units, 0, units, 0, 60)})


async def test_a_free_coupon_selling_fast_is_frozen_by_the_center_and_alerted_once(clock: FakeClock) -> None:
    store = MemoryStore()
    center = await started(store, clock)
    await free_coupon(center, clock)
    eu = center.join("eu")
    assert await center.alerts.evaluate() == []

    clock.advance(10)
    await sell(center, "eu", eu, 2_000)
    [alert] = [raised for raised in await center.alerts.evaluate() if raised.name == "free-money-burning"]

    assert alert.action == "froze the promotion"
    assert center.promotion("free-100").frozen
    [freeze] = [r.fields() for r in await center.audit_records(0, 100) if r.fields()["call"] == "SetFrozen"]
    assert freeze["actor"] == f"quota-center alert engine (alert {alert.id})"
    assert freeze["request_id"] == alert.id
    clock.advance(10)
    assert [a for a in await center.alerts.evaluate() if a.name == "free-money-burning"] == []

    restarted = await started(store, clock)
    assert alert in restarted.list_alerts(False, "free-100")


async def test_a_person_answers_an_alert_once_with_a_cause_and_it_is_audited(clock: FakeClock) -> None:
    center = await started(MemoryStore(), clock)
    await free_coupon(center, clock)
    raised = await center.raise_alert("reconcile", "free-100", "eu", "eu's ledger holds 3 more than the center knows")
    assert raised is not None
    assert await center.raise_alert("reconcile", "free-100", "eu", "again") is None

    answered = await center.acknowledge_alert(raised.id, Cause.REAL_FIXED, "replayed the lost report", ALICE)
    again = await center.acknowledge_alert(raised.id, Cause.REAL_FIXED, "retry", ALICE)

    assert answered == again
    assert answered.acknowledged_by == ALICE.actor
    with pytest.raises(FailedPrecondition, match="an answer once given is not changed"):
        await center.acknowledge_alert(raised.id, Cause.FALSE_ALARM, "", BOB)
    with pytest.raises(NotFound):
        await center.acknowledge_alert("A-77", Cause.FALSE_ALARM, "", BOB)
    acks = [r.fields() for r in await center.audit_records(0, 100) if r.fields()["call"] == "AcknowledgeAlert"]
    assert [(ack["actor"], ack["after"]["cause"]) for ack in acks] == [(ALICE.actor, "real-fixed")]
    assert center.list_alerts(False, "") == []
    assert center.list_alerts(True, "free-100") == [answered]


async def test_another_owner_cannot_silence_an_alert_on_a_promotion_not_theirs(clock: FakeClock) -> None:
    center = await started(MemoryStore(), clock)
    await free_coupon(center, clock)
    raised = await center.raise_alert("reconcile", "free-100", "eu", "eu's ledger holds 3 more than the center knows")
    assert raised is not None
    mallory = By(person("quota", Role.OWNER, "mallory"))

    with pytest.raises(PermissionDenied, match="AcknowledgeAlert on promotion free-100: it belongs to"):
        await center.acknowledge_alert(raised.id, Cause.FALSE_ALARM, "not mine", mallory)

    assert center.list_alerts(False, "free-100") == [raised]
    operator = By(person("quota", Role.OPERATOR, "carol"))
    assert (await center.acknowledge_alert(raised.id, Cause.REAL_ACCEPTED, "on call", operator)).acknowledged


async def test_an_answered_condition_stays_quiet_while_it_holds(clock: FakeClock) -> None:
    center = await started(MemoryStore(), clock)
    now = clock.wall_ms()
    await center.create_promotion(Promotion("sale", Kind.COUNT, "", 1_000, now, now + 30 * DAY_MS, ("eu",)), ALICE)
    eu = center.join("eu")
    await center.acquire("eu", eu, "sale", 950, "r-1", 60)
    await center.renew("eu", eu, {"sale": Report(950, 0, 950, 0, 60)})
    clock.advance(10)
    raised = await center.alerts.evaluate()
    assert "budget_low" in {alert.rule for alert in raised}
    for alert in raised:
        await center.acknowledge_alert(alert.id, Cause.REAL_ACCEPTED, "it sells well; let it sell out", ALICE)

    for _ in range(3):
        clock.advance(10)
        assert await center.alerts.evaluate() == []  # 50 of 1,000 left still, and a person accepted it

    assert center.list_alerts(False, "sale") == []
