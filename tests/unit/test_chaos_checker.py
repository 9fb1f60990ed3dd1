"""The chaos checker: each violation kind on a minimal history (and not without the fault), the JSON lines
round trip, and histories from a correct model of the agent that judge clean until one fault is planted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.chaos.books import Books, PromotionBooks, RegionBooks, ViolationKind
from loadtest.chaos.checker import judge
from loadtest.chaos.history import History, Kind, NemesisEvent, Operation, Outcome, Status
from region_agent.ledger.base import UNLIMITED, Line, UserLimit
from tests.unit.chaos_model import ACTIONS, LIMIT, PROMOTION, Step, run

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


def over_issue(fault: bool) -> tuple[History, Books]:
    second = deduct(2, "o2", 6, at=2) if fault else op(2, Kind.DEDUCT, "o2", Outcome.refused(EXHAUSTED), at=2)
    return History((deduct(1, "o1", 6, at=1), second)), books(12 if fault else 6, budget=10)


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


def after_freeze_until_its_end(fault: bool) -> tuple[History, Books]:
    """Invoked while frozen; answered before the unfreeze was sent (a fault), or after it (fine)."""
    freeze = NemesisEvent("freeze", PROMOTION, 10.0, 20.0)
    deduct_ = replace(deduct(1, "o1", 5, at=19.0), completed=19.5 if fault else 20.5)
    return History((deduct_,), (freeze,)), books(5)


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


CASES = {
    "over_issue": Case(ViolationKind.OVER_ISSUE, (2,), over_issue),
    "lost": Case(ViolationKind.LOST_ACKNOWLEDGEMENT, (1,), lost),
    "phantom": Case(ViolationKind.PHANTOM_CONSUMPTION, (1,), phantom),
    "two_answers": Case(ViolationKind.TWO_ANSWERS, (1, 2), two_answers),
    "confirmed_and_cancelled": Case(ViolationKind.TWO_ANSWERS, (2, 3), settled_twice),
    "applied_twice": Case(ViolationKind.APPLIED_TWICE, (1, 2), applied_twice),
    "unresolved": Case(ViolationKind.UNRESOLVED_UNKNOWN, (1,), unresolved),
    "after_freeze": Case(ViolationKind.AFTER_FREEZE, (1,), after_freeze),
    "after_freeze_partitioned": Case(ViolationKind.AFTER_FREEZE, (1,), after_freeze_partitioned),
    "after_freeze_until_its_end": Case(ViolationKind.AFTER_FREEZE, (1,), after_freeze_until_its_end),
    "user_units": Case(ViolationKind.USER_LIMIT, (3,), user_units),
    "user_orders": Case(ViolationKind.USER_LIMIT, (2,), user_orders),
    "over_refund": Case(ViolationKind.OVER_REFUND, (1, 2, 3), over_refund),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_fault_is_flagged_with_its_operations(case: Case) -> None:
    verdict = judge(*case.build(True))
    assert [v.operations for v in verdict.violations if v.kind is case.kind] == [case.ids]
    assert not verdict.ok
    assert verdict.counts()[case.kind.value] == 1


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_without_the_fault_the_history_is_clean(case: Case) -> None:
    verdict = judge(*case.build(False))
    assert verdict.violations == ()
    assert verdict.ok
    assert set(verdict.counts().values()) == {0}


def test_history_round_trips_through_json_lines() -> None:
    history, _ = over_refund(True)
    odd = op(9, Kind.CANCEL, 'o\n"x', Outcome.ok(line(1, "ü"), replayed=True, expired=True), at=0.1 + 0.2)
    history = History(
        (*history.operations, odd), (NemesisEvent("freeze", PROMOTION, 1 / 3), NemesisEvent("kill", "a", 2.0, 7.5))
    )
    assert History.from_jsonl(history.to_jsonl()) == history


steps = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 99), st.integers(0, 99), st.booleans(), st.booleans()),
    max_size=40,
)


# Faults are planted in programs that begin with an acknowledged deduction of 1 in r1 and its refund, so there
# is always something to plant them on (budget at least 2 gives r1 one unit).
BEGINNING: list[Step] = [("deduct", 0, 1, False, False), ("refund", 0, 1, False, False)]
budgets = st.integers(2, 30)


def judged(budget: int, operations: list[Operation], regions: dict[str, RegionBooks]) -> set[ViolationKind]:
    verdict = judge(History(tuple(operations)), {PROMOTION: PromotionBooks(budget, LIMIT, regions)})
    return {violation.kind for violation in verdict.violations}


@given(st.integers(0, 30), steps)
def test_a_correct_agent_judges_clean(budget: int, program: list[Step]) -> None:
    assert judged(budget, *run(budget, program)) == set()


@given(budgets, steps, st.integers(0, 999))
def test_a_dropped_deduction_is_flagged(budget: int, program: list[Step], pick: int) -> None:
    operations, regions = run(budget, BEGINNING + program)
    acknowledged = [op for op in operations if op.kind is Kind.DEDUCT and op.outcome.status is Status.OK]
    dropped = acknowledged[pick % len(acknowledged)]
    books = regions[dropped.region]
    regions[dropped.region] = replace(books, consumed=books.consumed - dropped.outcome.applied[0].amount)
    assert ViolationKind.LOST_ACKNOWLEDGEMENT in judged(budget, operations, regions)


@given(budgets, steps, st.integers(0, 999))
def test_a_second_fresh_ok_is_flagged(budget: int, program: list[Step], pick: int) -> None:
    operations, regions = run(budget, BEGINNING + program)
    fresh = [op for op in operations if op.outcome.status is Status.OK and not op.outcome.replayed]
    again = fresh[pick % len(fresh)]
    end = operations[-1].completed
    operations.append(replace(again, id=len(operations) + 1, invoked=end + 1, completed=end + 2))
    assert ViolationKind.APPLIED_TWICE in judged(budget, operations, regions)


@given(budgets, steps, st.integers(0, 999))
def test_a_forgotten_refund_is_flagged(budget: int, program: list[Step], pick: int) -> None:
    operations, regions = run(budget, BEGINNING + program)
    refunds = [op for op in operations if op.kind is Kind.REFUND and op.outcome.status is Status.OK]
    forgotten = refunds[pick % len(refunds)]
    books = regions[forgotten.region]
    regions[forgotten.region] = replace(books, consumed=books.consumed + forgotten.outcome.applied[0].amount)
    assert ViolationKind.PHANTOM_CONSUMPTION in judged(budget, operations, regions)
