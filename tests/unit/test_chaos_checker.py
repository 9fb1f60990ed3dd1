"""The chaos checker: each violation kind on a minimal history (and not without the fault), budgets in effect
over time, and the JSON lines round trip. Histories from a model of the agent are in `test_chaos_model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from loadtest.chaos.books import Books, PromotionBooks, RegionBooks, ViolationKind
from loadtest.chaos.checker import judge
from loadtest.chaos.history import History, Kind, NemesisEvent, Operation, Outcome
from loadtest.chaos.model import PROMOTION
from region_agent.ledger.base import UNLIMITED, Line, UserLimit

EXHAUSTED = "REJECT_REASON_EXHAUSTED"


def line(amount: int, user: str = "u1") -> tuple[Line, ...]:
    return (Line(PROMOTION, amount, user),)


def op(
    op_id: int, kind: Kind, order: str, outcome: Outcome, *, at: float, lines: tuple[Line, ...] = (), refund: str = ""
) -> Operation:
    return Operation(op_id, "c1", kind, order, "r1", "r1-a", lines, at, at + 0.5, outcome, refund)


def deduct(op_id: int, order: str, amount: int, *, at: float, user: str = "u1", replayed: bool = False) -> Operation:
    return op(op_id, Kind.DEDUCT, order, Outcome.ok(line(amount, user), replayed), at=at, lines=line(amount, user))


def books(consumed: int, budget: int = 100, limit: UserLimit = UNLIMITED) -> Books:
    return {PROMOTION: PromotionBooks(budget, limit, {"r1": RegionBooks(consumed=consumed)})}


@dataclass(frozen=True)
class Case:
    kind: ViolationKind
    ids: tuple[int, ...]
    build: Callable[[bool], tuple[History, Books]]
    """Given whether to plant the fault, the history and the books."""
    says: str = ""
    """Part of the violation's message."""


def over_issue(fault: bool) -> tuple[History, Books]:
    second = deduct(2, "o2", 6, at=2) if fault else op(2, Kind.DEDUCT, "o2", Outcome.refused(EXHAUSTED), at=2)
    return History((deduct(1, "o1", 6, at=1), second)), books(12 if fault else 6, budget=10)


def new_budget(at: float, value: int) -> NemesisEvent:
    return NemesisEvent("budget", PROMOTION, at, value=value)


def over_lowered_budget(fault: bool) -> tuple[History, Books]:
    """15 taken of 20, 10 refunded, the budget lowered to 10: the 15 was legal then, and a net of 9 after is too."""
    refund = op(2, Kind.REFUND, "o1", Outcome.ok((Line(PROMOTION, 10),)), at=3, lines=(Line(PROMOTION, 10),))
    late = deduct(3, "o2", 6 if fault else 4, at=6)
    history = History((deduct(1, "o1", 15, at=1), refund, late), (new_budget(0, 20), new_budget(5, 10)))
    return history, books(11 if fault else 9, budget=10)


def lost(fault: bool) -> tuple[History, Books]:
    return History((deduct(1, "o1", 5, at=1),)), books(0 if fault else 5)


def phantom(fault: bool) -> tuple[History, Books]:
    unknown = op(2, Kind.DEDUCT, "o2", Outcome.unknown(), at=2, lines=line(3))
    retry = op(3, Kind.DEDUCT, "o2", Outcome.refused(EXHAUSTED), at=3, lines=line(3))
    return History((deduct(1, "o1", 5, at=1), unknown, retry)), books(8 if fault else 5)


def two_answers(fault: bool) -> tuple[History, Books]:
    retry = op(2, Kind.DEDUCT, "o1", Outcome.refused(EXHAUSTED), at=2, lines=line(5))
    return History((deduct(1, "o1", 5, at=1), retry if fault else deduct(2, "o1", 5, at=2, replayed=True))), books(5)


def settled_twice(fault: bool) -> tuple[History, Books]:
    reserve = op(1, Kind.RESERVE, "o1", Outcome.ok(line(5)), at=1, lines=line(5))
    confirm = op(2, Kind.CONFIRM, "o1", Outcome.ok(line(5)), at=2)
    cancel = op(3, Kind.CANCEL, "o1", Outcome.ok(line(5)) if fault else Outcome.refused("FAILED_PRECONDITION"), at=3)
    return History((reserve, confirm, cancel)), books(5)


def applied_twice(fault: bool) -> tuple[History, Books]:
    return History((deduct(1, "o1", 5, at=1), deduct(2, "o1", 5, at=2, replayed=not fault))), books(5)


def unresolved(fault: bool) -> tuple[History, Books]:
    unknown = op(1, Kind.DEDUCT, "o1", Outcome.unknown("UNAVAILABLE"), at=1, lines=line(5))
    retry = () if fault else (deduct(2, "o1", 5, at=2, replayed=True),)
    return History((unknown, *retry)), books(5)


def after_freeze(fault: bool) -> tuple[History, Books]:
    freeze = NemesisEvent("freeze", PROMOTION, start=10.0)
    return History((deduct(1, "o1", 5, at=12 if fault else 10.5),), (freeze,)), books(5)


def after_freeze_partitioned(fault: bool) -> tuple[History, Books]:
    events = (NemesisEvent("partition", "r1", 5.0, 30.0), NemesisEvent("freeze", PROMOTION, 10.0, 40.0))
    return History((deduct(1, "o1", 5, at=25 if fault else 15),), events), books(5)


def after_freeze_leader_stopped(fault: bool) -> tuple[History, Books]:
    """The freeze reached a leader that was stopped before it could tell anyone: every region is cut off, so the
    lease (the Allowance's 10 s) bounds it, not propagation; past the lease it is a fault."""
    events = (NemesisEvent("freeze", PROMOTION, 10.0, 40.0), NemesisEvent("stop-leader", "center-0", 10.5, 30.0))
    return History((deduct(1, "o1", 5, at=25 if fault else 15),), events), books(5)


def after_freeze_until_its_end(fault: bool) -> tuple[History, Books]:
    """Invoked while frozen; answered before the unfreeze was sent (a fault), or after it (fine)."""
    freeze = NemesisEvent("freeze", PROMOTION, 10.0, 20.0)
    deduct_ = replace(deduct(1, "o1", 5, at=19.0), completed=19.5 if fault else 20.5)
    return History((deduct_,), (freeze,)), books(5)


def emergency(fault: bool) -> tuple[History, Books]:
    """The switch of the deduction's region, or of another region (which does not bind it)."""
    switch = NemesisEvent("emergency", "r1" if fault else "r2", start=10.0)
    return History((deduct(1, "o1", 5, at=12),), (switch,)), books(5)


def emergency_everywhere(fault: bool) -> tuple[History, Books]:
    """The switch for every region binds every promotion, and a reservation as much as a deduction."""
    other = (Line("q", 2, "u1"),)
    reserve = op(1, Kind.RESERVE, "o1", Outcome.ok(other), at=12 if fault else 20.5, lines=other)
    return History((reserve,), (NemesisEvent("emergency", "", 10.0, 20.0),)), books(0)


def emergency_partitioned(fault: bool) -> tuple[History, Books]:
    events = (NemesisEvent("partition", "r1", 5.0, 30.0), NemesisEvent("emergency", "r1", 10.0, 40.0))
    return History((deduct(1, "o1", 5, at=25 if fault else 15),), events), books(5)


def user_units(fault: bool) -> tuple[History, Books]:
    refund = op(2, Kind.REFUND, "o1", Outcome.ok((Line(PROMOTION, 3),)), at=2, lines=(Line(PROMOTION, 3),))
    ops = (deduct(1, "o1", 3, at=1), deduct(3, "o2", 3, at=3))
    return History(ops if fault else (*ops, refund)), books(6 if fault else 3, limit=UserLimit(units=5))


def user_orders(fault: bool) -> tuple[History, Books]:
    ops = (deduct(1, "o1", 1, at=1), deduct(2, "o2", 1, at=2, user="u1" if fault else "u2"))
    return History(ops), books(2, limit=UserLimit(orders=1))


def over_refund(fault: bool) -> tuple[History, Books]:
    first = op(2, Kind.REFUND, "o1", Outcome.ok((Line(PROMOTION, 3),)), at=2, lines=(Line(PROMOTION, 3),), refund="r1")
    back = 3 if fault else 2
    second = op(3, Kind.REFUND, "o1", Outcome.ok((Line(PROMOTION, back),)), at=3, lines=(Line(PROMOTION, back),))
    return History((deduct(1, "o1", 5, at=1), first, replace(second, refund_id="r2"))), books(5 - 3 - back)


def held_after_return(fault: bool) -> tuple[History, Books]:
    """Two open reservations hold 3 after every agent stopped; the center counting 4 as held strands 1."""
    reserves = [op(n, Kind.RESERVE, f"o{n}", Outcome.ok(line(n)), at=n, lines=line(n)) for n in (1, 2)]
    returned = 6 if fault else 7
    region = RegionBooks(kept=3, granted=10, returned=returned, outstanding=10 - returned)
    return History(tuple(reserves)), {PROMOTION: PromotionBooks(100, UNLIMITED, {"r1": region})}


def returned_more(fault: bool) -> tuple[History, Books]:
    returned = 6 if fault else 5
    region = RegionBooks(consumed=5, granted=10, returned=returned, outstanding=5 - returned)
    return History((deduct(1, "o1", 5, at=1),)), {PROMOTION: PromotionBooks(100, UNLIMITED, {"r1": region})}


CASES = {
    "over_issue": Case(ViolationKind.OVER_ISSUE, (2,), over_issue),
    "over_lowered_budget": Case(ViolationKind.OVER_ISSUE, (3,), over_lowered_budget, "the budget 10 then in effect"),
    "lost": Case(ViolationKind.LOST_ACKNOWLEDGEMENT, (1,), lost),
    "phantom": Case(ViolationKind.PHANTOM_CONSUMPTION, (1,), phantom),
    "two_answers": Case(ViolationKind.TWO_ANSWERS, (1, 2), two_answers),
    "confirmed_and_cancelled": Case(ViolationKind.TWO_ANSWERS, (2, 3), settled_twice),
    "applied_twice": Case(ViolationKind.APPLIED_TWICE, (1, 2), applied_twice),
    "unresolved": Case(ViolationKind.UNRESOLVED_UNKNOWN, (1,), unresolved),
    "after_freeze": Case(ViolationKind.AFTER_FREEZE, (1,), after_freeze),
    "after_freeze_partitioned": Case(ViolationKind.AFTER_FREEZE, (1,), after_freeze_partitioned),
    "after_freeze_leader_stopped": Case(
        ViolationKind.AFTER_FREEZE, (1,), after_freeze_leader_stopped, "cut off from the center"
    ),
    "after_freeze_until_its_end": Case(ViolationKind.AFTER_FREEZE, (1,), after_freeze_until_its_end),
    "emergency": Case(ViolationKind.AFTER_FREEZE, (1,), emergency, "after the emergency switch went on for r1"),
    "emergency_everywhere": Case(ViolationKind.AFTER_FREEZE, (1,), emergency_everywhere, "for every region"),
    "emergency_partitioned": Case(ViolationKind.AFTER_FREEZE, (1,), emergency_partitioned),
    "user_units": Case(ViolationKind.USER_LIMIT, (3,), user_units),
    "user_orders": Case(ViolationKind.USER_LIMIT, (2,), user_orders),
    "over_refund": Case(ViolationKind.OVER_REFUND, (1, 2, 3), over_refund),
    "held_after_return": Case(ViolationKind.HELD_AFTER_RETURN, (), held_after_return, "4 units as held by region r1"),
    "returned_more": Case(ViolationKind.HELD_AFTER_RETURN, (), returned_more, "the budget does not know of"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_fault_is_flagged_with_its_operations(case: Case) -> None:
    verdict = judge(*case.build(True))
    assert [v.operations for v in verdict.violations if v.kind is case.kind] == [case.ids]
    assert not verdict.ok
    assert verdict.counts()[case.kind.value] == 1
    assert all(case.says in v.message for v in verdict.violations if v.kind is case.kind)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_without_the_fault_the_history_is_clean(case: Case) -> None:
    verdict = judge(*case.build(False))
    assert verdict.violations == ()
    assert verdict.ok
    assert set(verdict.counts().values()) == {0}


def test_a_deduction_is_judged_on_the_budget_in_effect_not_the_final_one() -> None:
    """Lowered to 10 at 5 and raised to 30 at 20: 12 acknowledged at 6 was over, though 22 at the end is not."""
    ops = (deduct(1, "o1", 8, at=1), deduct(2, "o2", 4, at=6), deduct(3, "o3", 10, at=21))
    history = History(ops, (new_budget(0, 20), new_budget(5, 10), new_budget(20, 30)))
    (violation,) = judge(history, books(22, budget=30)).violations
    assert (violation.kind, violation.operations) == (ViolationKind.OVER_ISSUE, (2,))
    assert "net reached 12, above the budget 10 then in effect by 2" in violation.message


@pytest.mark.parametrize("events", [(), (NemesisEvent("budget", "q", 0.0, value=1), new_budget(5, 100))])
def test_before_any_budget_event_of_its_own_the_books_budget_applies(events: tuple[NemesisEvent, ...]) -> None:
    """As in histories kept before budget events were recorded."""
    over = History((deduct(1, "o1", 6, at=1), deduct(2, "o2", 6, at=2)), events)
    assert [v.operations for v in judge(over, books(12, budget=10)).violations] == [(2,)]


def test_history_round_trips_through_json_lines() -> None:
    history, _ = over_refund(True)
    odd = op(9, Kind.CANCEL, 'o\n"x', Outcome.ok(line(1, "ü"), replayed=True, expired=True), at=0.1 + 0.2)
    events = (NemesisEvent("freeze", PROMOTION, 1 / 3), NemesisEvent("kill", "a", 2.0, 7.5), new_budget(0.5, 2**53 + 1))
    history = History((*history.operations, odd), events)
    assert History.from_jsonl(history.to_jsonl()) == history


def test_a_history_kept_before_budget_events_reads_back() -> None:
    row = '{"nemesis": {"end": 7.5, "kind": "kill", "start": 2.0, "target": "center"}}\n'
    assert History.from_jsonl(row).events == (NemesisEvent("kill", "center", 2.0, 7.5),)
