"""Alert rules, pure: the file checked with every problem named at its line, and each kind firing on what a
person would call alarming, and not on an ordinary sale."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_center.alert_book import MAX_OPEN, Alert, Book, Cause
from quota_center.alerting import Snapshot, Watch, load_alert_rules, shipped_alert_rules
from quota_center.guard import RulesError
from quota_common.errors import FailedPrecondition, NotFound
from quota_common.model import Kind, Promotion

DAY_MS = 24 * 3_600_000
START = 1_700_000_000_000


def coupon(budget: int = 100_000, regions: tuple[str, ...] = ("eu", "us"), **values: int) -> Promotion:
    return Promotion("p", Kind.COUNT, "", budget, START, START + 30 * DAY_MS, regions, **values)  # type: ignore[arg-type]


FREE_100 = coupon(face_value=10_000)
"""The incident: ¥100 off, no spending threshold, no per-user limit."""
SAFE_100 = coupon(face_value=10_000, min_spend=50_000, per_user_limit=1)


def fired(watch: Watch, promotion: Promotion, at_s: float, **consumed: int) -> list[str]:
    snapshot = Snapshot(promotion, START + round(at_s * 1000), consumed)
    return [firing.rule.name for firing in watch.observe(shipped_alert_rules(), snapshot)]


def test_the_shipped_rules_load() -> None:
    names = {rule.name for rule in shipped_alert_rules().rules}

    assert {"free-money-burning", "budget-low", "one-region-takes-most", "orders-below-floor"} <= names


def test_a_free_100_coupon_selling_fast_is_frozen_within_one_evaluation() -> None:
    watch = Watch()
    assert fired(watch, FREE_100, 3600, eu=0, us=0) == []

    assert "free-money-burning" in fired(watch, FREE_100, 3610, eu=600, us=400)


def test_the_same_sale_with_a_threshold_and_a_user_limit_is_not_frozen() -> None:
    watch = Watch()
    fired(watch, SAFE_100, 3600, eu=0, us=0)

    assert "free-money-burning" not in fired(watch, SAFE_100, 3610, eu=600, us=400)


@given(st.integers(min_value=0, max_value=100_000 * 300 // (30 * 86_400)))
def test_consumption_at_the_plan_never_fires_a_burn_rule(per_hour_tenths: int) -> None:
    watch, consumed = Watch(), 0
    for minute in range(0, 120, 10):
        consumed += per_hour_tenths
        names = fired(watch, FREE_100, 86_400 + minute * 60, eu=consumed // 2, us=consumed - consumed // 2)
        assert not [name for name in names if name.startswith(("burn", "free"))]


def test_a_jump_above_the_trailing_rate_alerts() -> None:
    watch, promotion = Watch(), coupon(budget=100_000_000, regions=("eu",))
    for minute in range(0, 61, 5):
        fired(watch, promotion, minute * 60, eu=minute * 10_000)

    assert "burn-above-trailing" in fired(watch, promotion, 65 * 60, eu=600_000 + 5 * 60 * 10_000 * 6)


def test_budget_low_and_concentration() -> None:
    watch = Watch()

    names = fired(watch, SAFE_100, 10 * DAY_MS / 1000, eu=92_000, us=1_000)

    assert {"budget-low", "one-region-takes-most"} <= set(names)


def test_below_floor_fires_when_a_count_rises_and_not_when_it_stays() -> None:
    watch = Watch()

    def floors(count: int) -> list[str]:
        snapshot = Snapshot(SAFE_100, START + 1000, {"eu": 0}, {"eu": count})
        return [
            f.message for f in watch.observe(shipped_alert_rules(), snapshot) if f.rule.name == "orders-below-floor"
        ]

    assert len(floors(2)) == 1
    assert (
        "3 order line(s) below the price floor in eu, let through: sold below it (5 this ledger life)" in floors(5)[0]
    )
    assert floors(5) == []
    assert len(floors(1)) == 1, "fewer: a new ledger life, whose lines count again"


def test_a_below_floor_alert_says_whether_the_lines_were_refused() -> None:
    blocking = replace(SAFE_100, floor_bps=5_000, block_below_floor=True)
    [fired] = Watch().observe(shipped_alert_rules(), Snapshot(blocking, START + 1000, {}, {"eu": 4}))

    assert "4 order line(s) below the price floor in eu, refused: the promotion blocks them" in fired.message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[rule]]\nname = "x"\nkind = "burn"\naction = "alert"\nplan_pct = 1\n', ":3: rule 1 ('x'): kind must be"),
        (
            '[[rule]]\nname = "x"\nkind = "burn_rate"\naction = "alert"\nplan_pct = 200\n',
            ":5: rule 1 ('x'): 'plan_pct' needs 'window_s' above 0",
        ),
        (
            '[[rule]]\nname = "x"\nkind = "concentration"\naction = "page"\nshare_pct = 80\n',
            ":4: rule 1 ('x'): action must be alert or freeze",
        ),
        (
            '[[rule]]\nname = "x"\nkind = "below_floor"\naction = "alert"\nwhen = "before.budget > 1"\n',
            ":1: rule 1 ('x'): a below_floor rule needs min_increase",
        ),
        (
            '[[rule]]\nname = "x"\nkind = "budget_low"\naction = "alert"\nleft_pct = 1.5\n',
            ":5: rule 1 ('x'): 'left_pct'",
        ),
        ("rule = 3\n", "no [[rule]] tables"),
        ("[[rule]\n", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_names_the_rule_and_the_line(text: str, problem: str) -> None:
    with pytest.raises(RulesError) as error:
        load_alert_rules(text, "alerts.toml")

    assert any(problem in line for line in error.value.problems), error.value.problems


def test_every_problem_is_named_at_once() -> None:
    text = '[[rule]]\nname = "a"\nkind = "x"\naction = "alert"\n\n[[rule]]\nname = "a"\nkind = "below_floor"\n'
    with pytest.raises(RulesError) as error:
        load_alert_rules(text, "f")

    assert len(error.value.problems) >= 3


def alert(name: str = "burn-above-plan", promotion_id: str = "p", region: str = "") -> Alert:
    return Alert("", "burn_rate", name, promotion_id, region, "seen", START)


def test_the_book_keeps_one_open_alert_per_rule_promotion_and_region() -> None:
    raised = Book({}).raised_one(alert())
    assert raised is not None
    book, first = raised

    assert first.id == "A-1"
    assert book.raised_one(alert()) is None
    assert book.raised_one(alert(region="eu")) is not None
    answered, _ = book.acknowledged("A-1", Cause.REAL_FIXED, "fixed", "alice", START)
    again = answered.raised_one(alert())
    assert again is not None
    assert again[1].id == "A-2"


def test_acknowledging_twice_answers_the_same_and_refuses_another_cause() -> None:
    raised = Book({}).raised_one(alert())
    assert raised is not None
    book, _ = raised
    book, answered = book.acknowledged("A-1", Cause.FALSE_ALARM, "test", "alice", START)

    assert book.acknowledged("A-1", Cause.FALSE_ALARM, "retry", "bob", START + 1) == (book, answered)
    with pytest.raises(FailedPrecondition, match="acknowledged as false-alarm by alice"):
        book.acknowledged("A-1", Cause.REAL_FIXED, "", "bob", START)
    with pytest.raises(NotFound, match="no alert 'A-9'"):
        book.acknowledged("A-9", Cause.REAL_FIXED, "", "bob", START)


def test_the_book_is_bounded_and_survives_its_document() -> None:
    book = Book({})
    for number in range(MAX_OPEN + 5):
        raised = book.raised_one(alert(promotion_id=f"p{number}"))
        if raised is None:
            break
        book, added = raised
        book, _ = book.acknowledged(added.id, Cause.REAL_ACCEPTED, "", "a", START) if number % 2 else (book, added)

    assert len(book.unanswered()) <= MAX_OPEN
    assert len(book.alerts) <= MAX_OPEN * 2
    assert Book.from_document(book.to_document()) == book
    assert [a.id for a in book.listing(True, "")][:2] == [f"A-{book.raised}", f"A-{book.raised - 1}"]
