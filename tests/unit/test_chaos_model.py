"""Histories from a correct model of the agent (`chaos_model`) judge clean, until one fault is planted in them."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from loadtest.chaos.books import PromotionBooks, RegionBooks, ViolationKind
from loadtest.chaos.checker import judge
from loadtest.chaos.history import History, Kind, Operation, Status
from loadtest.chaos.model import ACTIONS, LIMIT, PROMOTION, Step, run

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


@given(budgets, steps, st.integers(1, 5))
def test_quota_stranded_after_the_agents_returned_is_flagged(budget: int, program: list[Step], lost: int) -> None:
    operations, regions = run(budget, BEGINNING + program)
    books = regions["r1"]
    regions["r1"] = replace(books, returned=books.returned - lost, outstanding=books.outstanding + lost)
    assert ViolationKind.HELD_AFTER_RETURN in judged(budget, operations, regions)


@given(budgets, steps, st.integers(0, 999))
def test_a_forgotten_refund_is_flagged(budget: int, program: list[Step], pick: int) -> None:
    operations, regions = run(budget, BEGINNING + program)
    refunds = [op for op in operations if op.kind is Kind.REFUND and op.outcome.status is Status.OK]
    forgotten = refunds[pick % len(refunds)]
    books = regions[forgotten.region]
    regions[forgotten.region] = replace(books, consumed=books.consumed + forgotten.outcome.applied[0].amount)
    assert ViolationKind.PHANTOM_CONSUMPTION in judged(budget, operations, regions)
