"""Reconciliation's comparison: an honest region differs only by work in flight, which a second reading
drops once it lands; an altered ledger is named at once with the promotion, the region and the amount."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quota_common.reconcile import Cause, CenterBook, Finding, LedgerBook, compare, compare_all, persistent

HONEST_CENTER = CenterBook(granted=100, returned=10, consumed=30, held=60)
HONEST_LEDGER = LedgerBook(granted=100, returned=10, deducted=40, refunded=10, held=5, available=55)


def causes(findings: list[Finding]) -> dict[Cause, int]:
    return {finding.cause: finding.amount for finding in findings}


def test_books_that_agree_show_nothing() -> None:
    assert compare("p", "eu", HONEST_CENTER, HONEST_LEDGER) == []


def test_a_grant_added_to_the_ledger_is_a_grant_the_center_never_made() -> None:
    altered = LedgerBook(granted=107, returned=10, deducted=40, refunded=10, held=5, available=55)

    found = compare("p", "eu", HONEST_CENTER, altered)

    assert causes(found) == {Cause.LEDGER_INCONSISTENT: 7, Cause.GRANT_NOT_MADE: 7}
    assert all(not f.cause.in_flight for f in found)
    assert found[1].describe().startswith("promotion p, region eu: 7 apart; the ledger counts grants")


def test_a_deduction_added_behind_the_scripts_back_shows_in_the_ledgers_own_counters() -> None:
    altered = LedgerBook(granted=100, returned=10, deducted=43, refunded=10, held=5, available=55)

    assert causes(compare("p", "eu", HONEST_CENTER, altered)) == {
        Cause.LEDGER_INCONSISTENT: 3,
        Cause.CONSUMPTION_NOT_REPORTED: 3,
    }


def test_a_grant_on_its_way_to_the_ledger_is_in_flight() -> None:
    center = CenterBook(granted=120, returned=10, consumed=30, held=80)

    assert causes(compare("p", "eu", center, HONEST_LEDGER)) == {Cause.CENTER_COUNTS_MORE: 20}


def test_consumption_and_returns_not_reported_yet_are_named_as_such() -> None:
    center = CenterBook(granted=100, returned=4, consumed=25, held=71)

    assert causes(compare("p", "eu", center, HONEST_LEDGER)) == {
        Cause.RETURN_NOT_TAKEN: 6,
        Cause.CONSUMPTION_NOT_REPORTED: 5,
    }


def test_refunds_not_reported_yet_leave_the_ledger_holding_more() -> None:
    center = CenterBook(granted=100, returned=10, consumed=33, held=57)

    assert causes(compare("p", "eu", center, HONEST_LEDGER)) == {Cause.LEDGER_HOLDS_MORE: 3}


def test_earlier_lives_of_the_ledger_are_no_difference() -> None:
    """The center's totals count a life written off long ago; the ledger starts again from zero."""
    center = CenterBook(granted=150, returned=10, consumed=50, held=60)
    ledger = LedgerBook(granted=70, returned=0, deducted=10, refunded=0, held=0, available=60)

    assert compare("p", "eu", center, ledger) == []


def test_a_ledger_holding_a_promotion_the_center_never_granted_there() -> None:
    ledger = LedgerBook(granted=5, available=5)

    assert causes(compare_all("p", {}, {"eu": ledger})) == {Cause.GRANT_NOT_MADE: 5}


def test_a_second_reading_keeps_what_stayed_and_drops_what_landed() -> None:
    stuck = Finding("p", "eu", Cause.CONSUMPTION_NOT_REPORTED, 9)
    landed = Finding("p", "us", Cause.CENTER_COUNTS_MORE, 20)
    forged = Finding("q", "eu", Cause.GRANT_NOT_MADE, 5)
    first = [stuck, landed]
    second = [Finding("p", "eu", Cause.CONSUMPTION_NOT_REPORTED, 12), forged]

    assert persistent(first, second) == [stuck, forged]


@st.composite
def honest_region(draw: st.DrawFn) -> tuple[CenterBook, LedgerBook, bool]:
    """A region whose ledger nobody touched, read while grants and reports travel; with whether anything
    was in flight."""
    n = st.integers(0, 10**12)
    applied, in_flight = draw(n), draw(n)
    returned = draw(st.integers(0, applied))
    deducted = draw(st.integers(0, applied - returned))
    refunded = draw(st.integers(0, deducted))
    held = draw(st.integers(0, applied - returned - deducted + refunded))
    told_returned = draw(st.integers(0, returned))
    told_deducted = draw(st.integers(0, deducted))
    told_refunded = draw(st.integers(0, min(refunded, told_deducted)))
    earlier_granted = draw(n)
    earlier_returned = draw(st.integers(0, earlier_granted))
    earlier_consumed = draw(st.integers(0, earlier_granted - earlier_returned))
    told_consumed = told_deducted - told_refunded
    center = CenterBook(
        granted=earlier_granted + applied + in_flight,
        returned=earlier_returned + told_returned,
        consumed=earlier_consumed + told_consumed,
        held=applied + in_flight - told_returned - told_consumed,
    )
    available = applied - returned - deducted + refunded - held
    ledger = LedgerBook(applied, returned, deducted, refunded, held, available)
    moving = (in_flight, told_returned, told_deducted, told_refunded) != (0, returned, deducted, refunded)
    return center, ledger, moving


@given(honest_region())
def test_an_honest_region_differs_only_by_work_in_flight(region: tuple[CenterBook, LedgerBook, bool]) -> None:
    center, ledger, moving = region

    found = compare("p", "eu", center, ledger)

    assert all(f.cause.in_flight and f.amount > 0 for f in found)
    if not moving:
        assert found == []


@given(honest_region(), st.integers(1, 10**6))
def test_a_grant_planted_in_the_ledger_is_named_at_once_with_its_amount(
    region: tuple[CenterBook, LedgerBook, bool], planted: int
) -> None:
    center, ledger, _ = region
    grants_counted = center.granted - ledger.granted
    altered = LedgerBook(
        ledger.granted + grants_counted + planted,
        ledger.returned,
        ledger.deducted,
        ledger.refunded,
        ledger.held,
        ledger.available,
    )

    found = [f for f in compare("p", "eu", center, altered) if not f.cause.in_flight]

    assert Finding("p", "eu", Cause.GRANT_NOT_MADE, planted) in found
