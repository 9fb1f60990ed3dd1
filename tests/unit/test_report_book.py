"""Which promotions a renewal under the region lease reports: what moved, what may hide a lost grant."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from quota_common.model import Report
from region_agent.report_book import ReportBook

SOLD = Report(granted=10, returned=0, deducted=3, refunded=0, demand_per_minute=6)


def _settled() -> ReportBook:
    book = ReportBook()
    book.taken("p", SOLD, book.asks)
    book.wants_all = False
    return book


def test_a_new_life_reports_everything_until_a_full_round_was_taken_in() -> None:
    book = ReportBook()
    assert book.due("p", SOLD)
    book.taken("p", SOLD, book.asks)
    assert book.due("p", SOLD), "until the round is over and the center renewed the region lease"
    book.wants_all = False
    assert not book.due("p", SOLD)
    book.new_life()
    assert book.due("p", SOLD)


@given(st.sampled_from(["granted", "returned", "deducted", "refunded", "demand_per_minute", "below_floor"]))
def test_a_report_is_due_when_anything_in_it_moved(field: str) -> None:
    book = _settled()
    moved = replace(SOLD, **{field: getattr(SOLD, field) + 1})

    assert book.due("p", moved)
    assert not book.due("p", SOLD)


def test_an_ask_keeps_the_promotion_reported_until_a_report_made_after_it_is_taken_in() -> None:
    book = _settled()
    made_before = book.asks
    book.asked(["p", "q"])
    assert book.due("p", SOLD)

    book.taken("p", SOLD, made_before)  # the answer to a report made before the ask
    assert book.due("p", SOLD), "its grant may still be lost: only a later report shows the center resends it"
    book.taken("p", SOLD, book.asks)
    assert not book.due("p", SOLD)
    assert book.due("q", SOLD), "never taken in"


def test_a_refused_report_is_due_again() -> None:
    book = _settled()
    book.refused("p")
    assert book.due("p", SOLD)
