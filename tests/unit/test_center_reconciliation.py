"""The center reconciles at every renewal: a report it refuses is a region's ledger disagreeing with its
books, kept (promotion, region, amount, cause) until a report from that ledger agrees again."""

from __future__ import annotations

import pytest

from quota_center.alert_book import Cause as AlertCause
from quota_center.center import Center
from quota_center.ledger import PromotionState, RegionAccount
from quota_center.reconciliation import refused_report
from quota_center.trail import By
from quota_common.clock import FakeClock
from quota_common.errors import InvalidArgument, NotFound
from quota_common.model import Kind, Promotion, Report
from quota_common.reconcile import Cause, Finding
from quota_testing.memory_store import MemoryStore

PROMOTION = Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu", "us"))


@pytest.fixture
async def center() -> Center:
    center = Center(MemoryStore(), FakeClock())
    await center.start()
    await center.create_promotion(PROMOTION)
    await center.acquire("eu", "eu-1", "p", 10, "r1", 0)
    return center


async def test_a_report_counting_grants_never_made_is_a_finding_until_the_ledger_agrees(center: Center) -> None:
    [answer] = await center.renew("eu", "eu-1", {"p": Report(granted=15, returned=0, deducted=2, refunded=0)})

    assert isinstance(answer, InvalidArgument)
    assert center.discrepancies() == [Finding("p", "eu", Cause.GRANT_NOT_MADE, 5)]

    await center.renew("eu", "eu-1", {"p": Report(granted=10, returned=0, deducted=2, refunded=0)})

    assert center.discrepancies() == []


async def test_a_difference_is_a_reconcile_alert_raised_once_while_it_persists(center: Center) -> None:
    forged = {"p": Report(granted=15, returned=0, deducted=2, refunded=0)}
    await center.renew("eu", "eu-1", forged)

    await center.alert_discrepancies()
    await center.renew("eu", "eu-1", forged)
    await center.alert_discrepancies()

    [alert] = center.list_alerts(include_acknowledged=True, promotion_id="p")
    assert (alert.rule, alert.promotion_id, alert.region) == ("reconcile", "p", "eu")
    assert "5 apart" in alert.message


async def test_a_refusal_for_another_reason_is_no_finding(center: Center) -> None:
    [answer] = await center.renew("eu", "eu-1", {"unknown": Report(1, 0, 0, 0)})

    assert isinstance(answer, NotFound)
    assert center.discrepancies() == []


def state(account: RegionAccount) -> PromotionState:
    return PromotionState(PROMOTION, {"eu": account})


@pytest.mark.parametrize(
    ("known", "report", "expected"),
    [
        (RegionAccount("i", granted=10), Report(12, 0, 0, 0), Finding("p", "eu", Cause.GRANT_NOT_MADE, 2)),
        (RegionAccount("i", granted=10), Report(10, 3, 9, 0), Finding("p", "eu", Cause.REPORT_OVERSPENT, 2)),
        (RegionAccount("i", granted=10), Report(10, 0, 1, 4), Finding("p", "eu", Cause.REPORT_OVERSPENT, 3)),
        (
            RegionAccount("i", granted=10, returned=6),
            Report(10, 0, 7, 0),
            Finding("p", "eu", Cause.REPORT_CONTRADICTS, 3),
        ),
        (RegionAccount("i", granted=10, deducted=4), Report(10, 0, 4, 1), None),
    ],
)
def test_what_a_refused_report_shows(known: RegionAccount, report: Report, expected: Finding | None) -> None:
    assert refused_report(state(known), "eu", report) == expected


async def test_an_answered_difference_is_not_raised_again_until_it_cleared_and_came_back(center: Center) -> None:
    forged, honest = Report(15, 0, 2, 0), Report(10, 0, 2, 0)
    await center.renew("eu", "eu-1", {"p": forged})
    await center.alert_discrepancies()
    [first] = center.list_alerts(False, "p")
    await center.acknowledge_alert(first.id, AlertCause.REAL_ACCEPTED, "known", By())

    await center.renew("eu", "eu-1", {"p": forged})
    await center.alert_discrepancies()
    assert center.list_alerts(False, "p") == []  # the answer covers the difference while it lasts

    await center.renew("eu", "eu-1", {"p": honest})
    await center.alert_discrepancies()
    await center.renew("eu", "eu-1", {"p": forged})
    await center.alert_discrepancies()
    [again] = center.list_alerts(False, "p")
    assert again.id != first.id


async def test_a_regions_agents_reporting_their_own_below_floor_counts_read_as_the_highest(center: Center) -> None:
    for count in (5, 3, 5, 3):  # two agents of eu, sharing one ledger life, each counting what it served
        await center.renew("eu", "eu-1", {"p": Report(10, 0, 2, 0, below_floor=count)})

    [eu] = [view for view in center.usage("p").regions if view.region == "eu"]
    assert eu.below_floor == 5


async def test_a_ledger_whose_available_disagrees_with_its_counters_is_a_finding_though_its_report_is_taken(
    center: Center,
) -> None:
    altered = Report(10, 0, 2, 0, available=17, held=1)  # its counters say 10 - 2 - 1 = 7

    [answer] = await center.renew("eu", "eu-1", {"p": altered})

    assert not isinstance(answer, Exception)
    assert center.discrepancies() == [Finding("p", "eu", Cause.LEDGER_INCONSISTENT, 10)]
    await center.renew("eu", "eu-1", {"p": Report(10, 0, 2, 0, available=7, held=1)})
    assert center.discrepancies() == []
    await center.renew("eu", "eu-1", {"p": Report(10, 0, 2, 0)})  # an agent that does not say: nothing to compare
    assert center.discrepancies() == []
