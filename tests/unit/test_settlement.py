"""A promotion's statement, pure: whatever the regions did (grants, spending, refunds, returns, ledger lives
lost), its figures add up to the budget and none is negative; once settled it no longer changes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_center import ledger, settlement
from quota_center.ledger import GrantRecord, PromotionState
from quota_common.errors import FailedPrecondition
from quota_common.model import Kind, Promotion, Report

REGIONS = ("eu", "us")
START_MS, END_MS = 1_000_000, 2_000_000
GRACE_MS = 60_000


def fresh(budget: int) -> PromotionState:
    return PromotionState(Promotion("p", Kind.COUNT, "", budget, START_MS, END_MS, REGIONS))


def step(state: PromotionState, data: st.DataObject, lives: dict[str, int]) -> None:
    """One thing a region may do: take a grant, report spending, refunds and returns, or lose its ledger."""
    region = data.draw(st.sampled_from(REGIONS), "region")
    ledger.admit(state, region, f"life-{lives[region]:04d}")
    account = state.accounts[region]
    what = data.draw(st.sampled_from(["grant", "report", "new life"]), "what")
    if what == "grant" and state.unallocated > 0:
        amount = data.draw(st.integers(1, state.unallocated), "amount")
        ledger.grant(
            state, GrantRecord(f"g{len(account.recent_grants)}", "r", "p", region, account.incarnation, amount)
        )
    elif what == "report":
        returned = account.returned + data.draw(st.integers(0, account.held), "returned")
        net = account.deducted - account.refunded
        deducted = account.deducted + data.draw(st.integers(0, account.granted - returned - net), "deducted")
        refunded = account.refunded + data.draw(st.integers(0, deducted - account.refunded), "refunded")
        ledger.apply_report(state, region, Report(account.granted, returned, deducted, refunded))
    elif what == "new life":
        lives[region] += 1
        ledger.admit(state, region, f"life-{lives[region]:04d}")


def books(budget: int, data: st.DataObject) -> PromotionState:
    state = fresh(budget)
    lives = dict.fromkeys(REGIONS, 0)
    for _ in range(data.draw(st.integers(0, 30), "steps")):
        step(state, data, lives)
    return state


def check_adds_up(statement: settlement.Statement) -> None:
    figures = (statement.issued, statement.refunded, statement.written_off, statement.stranded, statement.unspent)
    assert min(figures) >= 0, statement
    assert statement.refunded <= statement.issued
    spent = statement.issued - statement.refunded
    assert statement.budget == spent + statement.written_off + statement.stranded + statement.unspent
    for region in statement.regions:
        assert min(region.granted, region.returned, region.issued, region.refunded) >= 0, region
        assert min(region.written_off, region.stranded) >= 0, region
        # What a region took and did not give back was spent, lost with a ledger, or is still held.
        taken = region.granted - region.returned
        assert taken == region.issued - region.refunded + region.written_off + region.stranded, region


@given(st.integers(1, 1_000), st.data())
def test_the_figures_always_add_up_to_the_budget_and_none_is_negative(budget: int, data: st.DataObject) -> None:
    state = books(budget, data)
    now_ms = data.draw(st.integers(START_MS, END_MS + 2 * GRACE_MS), "now")

    statement = settlement.statement_of(state, now_ms)

    check_adds_up(statement)
    assert statement.unspent == state.unallocated
    assert [region.region for region in statement.regions] == list(REGIONS)


@given(st.integers(1, 1_000), st.data())
def test_a_settled_statement_no_longer_changes_whatever_comes_in_after(budget: int, data: st.DataObject) -> None:
    state = books(budget, data)
    assert not settlement.settle(state, END_MS + GRACE_MS - 1, GRACE_MS), "settled before its grace passed"
    settled_at = END_MS + GRACE_MS + data.draw(st.integers(0, GRACE_MS), "late by")
    assert settlement.settle(state, settled_at, GRACE_MS)
    final = settlement.statement_of(state, settled_at)

    lives = {region: int(state.account(region).incarnation.removeprefix("life-") or 0) for region in REGIONS}
    for _ in range(data.draw(st.integers(1, 10), "late steps")):
        step(state, data, lives)
    stored = PromotionState.from_document(json.loads(json.dumps(state.to_document())))

    assert not settlement.settle(stored, settled_at + GRACE_MS, GRACE_MS)
    assert settlement.statement_of(stored, settled_at + GRACE_MS) == final
    assert (final.state, final.settled_at_ms, final.ended_at_ms) == (settlement.SETTLED, settled_at, END_MS)
    check_adds_up(final)


def test_open_before_its_end_then_ended_and_what_regions_hold_shows_as_stranded() -> None:
    state = fresh(100)
    ledger.admit(state, "eu", "life-1")
    ledger.grant(state, GrantRecord("g1", "r1", "p", "eu", "life-1", 40))
    ledger.apply_report(state, "eu", Report(40, 5, 30, 4))

    before = settlement.statement_of(state, END_MS - 1)
    after = settlement.statement_of(state, END_MS)

    assert (before.state, before.ended_at_ms) == (settlement.OPEN, 0)
    assert (after.state, after.ended_at_ms) == (settlement.ENDED, END_MS)
    eu = after.regions[0]
    assert (eu.granted, eu.returned, eu.issued, eu.refunded, eu.stranded) == (40, 5, 30, 4, 9)
    assert (after.issued, after.refunded, after.stranded, after.unspent) == (30, 4, 9, 65)


def test_issued_and_refunded_stay_apart_across_ledger_lives() -> None:
    state = fresh(100)
    ledger.admit(state, "eu", "life-1")
    ledger.grant(state, GrantRecord("g1", "r1", "p", "eu", "life-1", 40))
    ledger.apply_report(state, "eu", Report(40, 0, 30, 10))
    ledger.admit(state, "eu", "life-2")  # the first life's ledger is lost: what it held is written off

    eu = settlement.statement_of(state, END_MS).regions[0]

    assert (eu.issued, eu.refunded, eu.written_off, eu.stranded) == (30, 10, 20, 0)


def test_an_account_stored_before_refunds_were_kept_apart_still_loads_and_adds_up() -> None:
    state = fresh(100)
    document = state.to_document()
    old_account = {
        "incarnation": "life-2",
        "granted": 10,
        "returned": 0,
        "deducted": 6,
        "refunded": 1,
        "retired_granted": 40,
        "retired_returned": 0,
        "retired_consumed": 20,
        "written_off": 20,
        "retired_incarnations": ["life-1"],
        "recent_grants": [],
    }
    document["accounts"] = {"eu": old_account}

    loaded = PromotionState.from_document(document)
    statement = settlement.statement_of(loaded, END_MS)

    assert loaded.statement is None
    eu = statement.regions[0]
    # The first life's refunds were netted into what it consumed: it shows as issued 20, refunded 0.
    assert (eu.issued, eu.refunded, eu.written_off, eu.stranded) == (26, 1, 20, 5)
    check_adds_up(statement)


def test_only_a_settled_promotion_is_archived_and_once() -> None:
    state = fresh(100)

    with pytest.raises(
        FailedPrecondition, match=r"not settled.*settles once its grace has passed, at 1970-01-01T00:34"
    ):
        settlement.archive(state, 2, GRACE_MS)
    assert settlement.settle(state, END_MS + GRACE_MS, GRACE_MS)
    assert settlement.archive(state, 2, GRACE_MS)
    assert (state.promotion.archived, state.promotion.revision) == (True, 2)
    assert not settlement.archive(state, 3, GRACE_MS)
    assert state.promotion.revision == 2


def test_nothing_but_archiving_changes_a_settled_promotion() -> None:
    state = fresh(100)
    settlement.refuse_if_settled(state, "SetBudget")
    settlement.settle(state, END_MS + GRACE_MS, GRACE_MS)

    with pytest.raises(FailedPrecondition, match=r"p is settled .*statement is final and SetBudget would change"):
        settlement.refuse_if_settled(state, "SetBudget")
    settlement.refuse_if_settled(state, settlement.ARCHIVE)
