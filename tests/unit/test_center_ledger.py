"""The center's pure ledger: promotion rules, budgets, incarnations and write-offs, reports."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_center import ledger
from quota_center.ledger import GrantRecord, PromotionState
from quota_common.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Superseded
from quota_common.model import Kind, Promotion, Report
from quota_common.validation import COUNTER_CEILING, MAX_AMOUNT, MAX_COUNTER

PROMO = "promo-1"
QUICK = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


REGIONS = ("eu", "us", "ap")


def new_state(budget: int = 100, regions: tuple[str, ...] = ("eu", "us")) -> PromotionState:
    return PromotionState(Promotion(PROMO, Kind.COUNT, "", budget, 0, 1_000, regions))


def grant_to(state: PromotionState, region: str, incarnation: str, amount: int, grant_id: str) -> GrantRecord:
    ledger.admit(state, region, incarnation)
    record = GrantRecord(grant_id, f"req-{grant_id}", state.promotion.id, region, incarnation, amount)
    ledger.grant(state, record)
    return record


def snapshot(state: PromotionState) -> str:
    return json.dumps(state.to_document(), sort_keys=True)


@dataclass
class AgentCounters:
    """A well-behaved agent's cumulative counters for the current incarnation."""

    granted: int = 0
    returned: int = 0
    deducted: int = 0
    refunded: int = 0

    def report(self, demand: int = 0) -> Report:
        return Report(self.granted, self.returned, self.deducted, self.refunded, demand)


@st.composite
def center_states(draw: st.DrawFn) -> PromotionState:
    """A promotion after a random history driven through the ledger's own API by well-behaved agents."""
    regions = REGIONS[: draw(st.integers(min_value=1, max_value=3))]
    kind = draw(st.sampled_from(Kind))
    promotion = Promotion(
        id=PROMO,
        kind=kind,
        currency="EUR" if kind is Kind.AMOUNT else "",
        budget=draw(st.integers(min_value=0, max_value=300)),
        start_ms=0,
        end_ms=1_000,
        regions=regions,
        frozen=draw(st.booleans()),
        revision=draw(st.integers(min_value=1, max_value=5)),
    )
    state = PromotionState(promotion)
    incarnations = dict.fromkeys(regions, 0)
    agents = {region: AgentCounters() for region in regions}
    grants = 0
    for _ in range(draw(st.integers(min_value=0, max_value=30))):
        region = draw(st.sampled_from(regions))
        agent = agents[region]
        action = draw(st.sampled_from(["grant", "grant", "spend", "report", "restart"]))
        if action == "restart":
            incarnations[region] += 1
            agents[region] = AgentCounters()
            ledger.admit(state, region, f"{region}-{incarnations[region]:04d}")
        elif action == "grant" and state.unallocated > 0:
            amount = draw(st.integers(min_value=1, max_value=state.unallocated))
            grants += 1
            grant_to(state, region, f"{region}-{incarnations[region]:04d}", amount, f"g{grants}")
            if draw(st.booleans()):  # the answer reached the agent
                agent.granted = state.accounts[region].granted
        elif action == "spend":
            available = agent.granted - agent.returned - agent.deducted + agent.refunded
            agent.deducted += draw(st.integers(min_value=0, max_value=available))
            agent.refunded += draw(st.integers(min_value=0, max_value=agent.deducted - agent.refunded))
            available = agent.granted - agent.returned - agent.deducted + agent.refunded
            agent.returned += draw(st.integers(min_value=0, max_value=available))
        elif action == "report":
            ledger.admit(state, region, f"{region}-{incarnations[region]:04d}")
            ledger.apply_report(state, region, agent.report(draw(st.integers(min_value=0, max_value=600))))
    state.version = draw(st.integers(min_value=1, max_value=1_000))
    return state


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"end_ms": 0}, "end_time"),
        ({"end_ms": -1}, "end_time"),
        ({"regions": ()}, "at least one region"),
        ({"regions": ("eu", "us", "eu")}, "twice"),
        ({"currency": "EUR"}, "takes no currency"),
        ({"kind": Kind.AMOUNT}, "ISO 4217"),
        ({"kind": Kind.AMOUNT, "currency": "eur"}, "ISO 4217"),
        ({"kind": Kind.AMOUNT, "currency": "EURO"}, "ISO 4217"),
        ({"kind": Kind.AMOUNT, "currency": "ÉUR"}, "ISO 4217"),
    ],
)
def test_check_new_promotion_rejects(changes: dict[str, object], message: str) -> None:
    promotion = replace(new_state().promotion, **changes)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message):
        ledger.check_new_promotion(promotion)


@pytest.mark.parametrize(
    "promotion",
    [
        Promotion("p", Kind.COUNT, "", 10, 0, 1, ("eu",)),
        Promotion("p", Kind.AMOUNT, "EUR", 0, 5, 6, ("eu", "us")),
    ],
)
def test_check_new_promotion_accepts(promotion: Promotion) -> None:
    ledger.check_new_promotion(promotion)


def test_set_budget_below_what_regions_hold_names_the_figures_and_changes_nothing() -> None:
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 30, "g1")
    grant_to(state, "us", "us-1", 20, "g2")
    ledger.apply_report(state, "eu", Report(granted=30, returned=5, deducted=0, refunded=0))
    assert state.unallocated == 55
    before = snapshot(state)
    with pytest.raises(FailedPrecondition) as caught:
        ledger.set_budget(state, 44, expected_revision=1, revision=2)
    message = caught.value.message
    for figure in (
        "budget 44",
        "the 45 regions have already taken, spent or not",
        "granted 50",
        "returned 5",
        "lowest possible budget now is 45",
    ):
        assert figure in message, message
    assert snapshot(state) == before
    ledger.set_budget(state, 45, expected_revision=1, revision=2)
    assert state.promotion.budget == 45
    assert state.promotion.revision == 2
    assert state.unallocated == 0


def test_set_budget_with_a_stale_revision_changes_nothing() -> None:
    state = new_state(100)
    ledger.set_budget(state, 200, expected_revision=1, revision=7)
    before = snapshot(state)
    with pytest.raises(FailedPrecondition, match="at revision 7, not 1"):
        ledger.set_budget(state, 300, expected_revision=1, revision=8)
    with pytest.raises(FailedPrecondition, match="at revision 7, not 8"):
        ledger.set_budget(state, 300, expected_revision=8, revision=8)
    assert snapshot(state) == before


@QUICK
@given(state=center_states(), budget=st.integers(min_value=-10, max_value=400), stale=st.booleans())
def test_set_budget_never_goes_below_what_is_allocated(state: PromotionState, budget: int, stale: bool) -> None:
    allocated = state.promotion.budget - state.unallocated
    revision = state.promotion.revision
    before = snapshot(state)
    if stale or budget < allocated:
        with pytest.raises(FailedPrecondition):
            ledger.set_budget(state, budget, revision - 1 if stale else revision, revision + 1)
        assert snapshot(state) == before
        return
    changed = ledger.set_budget(state, budget, revision, revision + 1)
    assert changed == (budget != json.loads(before)["promotion"]["budget"])
    assert state.promotion.budget == budget
    assert state.promotion.revision == (revision + 1 if changed else revision)
    assert state.unallocated == budget - allocated >= 0
    assert state.accounts == PromotionState.from_document(json.loads(before)).accounts


def test_set_frozen_takes_the_new_revision_only_on_change() -> None:
    state = new_state()
    assert ledger.set_frozen(state, True, revision=5)
    assert state.promotion.frozen
    assert state.promotion.revision == 5
    assert not ledger.set_frozen(state, True, revision=6)
    assert state.promotion.revision == 5
    assert ledger.set_frozen(state, False, revision=9)
    assert not state.promotion.frozen
    assert state.promotion.revision == 9


def test_admit_a_region_that_may_not_spend_is_denied_and_changes_nothing() -> None:
    state = new_state(regions=("eu", "us"))
    before = snapshot(state)
    with pytest.raises(PermissionDenied) as caught:
        ledger.admit(state, "ap", "ap-1")
    assert "'ap'" in caught.value.message
    assert "eu, us" in caught.value.message
    assert snapshot(state) == before
    assert "ap" not in state.accounts


def test_admit_is_idempotent_and_refuses_retired_incarnations() -> None:
    state = new_state()
    assert ledger.admit(state, "eu", "eu-1")
    before = snapshot(state)
    assert not ledger.admit(state, "eu", "eu-1")
    assert snapshot(state) == before
    assert ledger.admit(state, "eu", "eu-2")
    before = snapshot(state)
    with pytest.raises(Superseded, match="eu-1"):
        ledger.admit(state, "eu", "eu-1")
    with pytest.raises(Superseded, match="eu-0"):
        ledger.admit(state, "eu", "eu-0")  # a late message from a process the center never heard of
    assert snapshot(state) == before


@QUICK
@given(state=center_states(), region_index=st.integers(min_value=0, max_value=2))
def test_new_incarnation_writes_off_what_the_old_one_held(state: PromotionState, region_index: int) -> None:
    region = state.promotion.regions[region_index % len(state.promotion.regions)]
    ledger.admit(state, region, "z-1-old")
    old = copy.deepcopy(state.accounts[region])
    unallocated = state.unallocated
    written_off = {r: a.written_off for r, a in state.accounts.items()}

    assert ledger.admit(state, region, "z-2-new")

    account = state.accounts[region]
    held = old.granted - old.returned - (old.deducted - old.refunded)
    assert account.written_off == old.written_off + held
    assert account.retired_granted == old.retired_granted + old.granted
    assert account.retired_returned == old.retired_returned + old.returned
    assert account.retired_consumed == old.retired_consumed + old.deducted - old.refunded
    assert account.retired_incarnations == [*old.retired_incarnations, "z-1-old"]
    assert (account.granted, account.returned, account.deducted, account.refunded) == (0, 0, 0, 0)
    assert account.recent_grants == []
    assert account.outstanding == old.outstanding
    assert account.consumed == old.consumed
    # What was written off is never granted again: unallocated does not grow.
    assert state.unallocated == unallocated
    assert {r: a.written_off for r, a in state.accounts.items() if r != region} == {
        r: w for r, w in written_off.items() if r != region
    }
    total_written_off = sum(a.written_off for a in state.accounts.values())
    assert state.unallocated <= state.promotion.budget - total_written_off
    with pytest.raises(FailedPrecondition):
        ledger.grant(state, GrantRecord("g-new", "r-new", PROMO, region, "z-2-new", state.unallocated + 1))
    # The old incarnation cannot come back, and the new one reports from zero.
    with pytest.raises(FailedPrecondition, match="old"):
        ledger.admit(state, region, "z-1-old")
    with pytest.raises(InvalidArgument):
        ledger.apply_report(state, region, Report(granted=1, returned=0, deducted=0, refunded=0))


def test_write_off_example() -> None:
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 40, "g1")
    ledger.apply_report(state, "eu", Report(granted=40, returned=10, deducted=12, refunded=2))
    assert state.unallocated == 70
    ledger.admit(state, "eu", "eu-2")
    account = state.accounts["eu"]
    assert account.written_off == 20
    assert account.consumed == 10
    assert account.outstanding == 30
    assert state.unallocated == 70
    grant_to(state, "eu", "eu-2", 70, "g2")
    assert state.unallocated == 0


@pytest.mark.parametrize("amount", [0, -1, 71])
def test_grant_outside_what_is_unallocated_is_refused_and_changes_nothing(amount: int) -> None:
    state = new_state(100)
    grant_to(state, "us", "us-1", 30, "g0")
    ledger.admit(state, "eu", "eu-1")
    before = snapshot(state)
    with pytest.raises(FailedPrecondition, match=f"cannot grant {amount}; 70 is unallocated"):
        ledger.grant(state, GrantRecord("g1", "r1", PROMO, "eu", "eu-1", amount))
    assert snapshot(state) == before


def test_grant_keeps_the_recent_grants() -> None:
    state = new_state(1_000)
    for i in range(ledger.RECENT_GRANTS_KEPT + 5):
        grant_to(state, "eu", "eu-1", 1, f"g{i}")
    account = state.accounts["eu"]
    assert account.granted == ledger.RECENT_GRANTS_KEPT + 5
    assert account.recent_grants == [(f"g{i}", 1) for i in range(5, ledger.RECENT_GRANTS_KEPT + 5)]
    assert state.unallocated == 1_000 - ledger.RECENT_GRANTS_KEPT - 5


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (Report(granted=31, returned=0, deducted=0, refunded=0), "granted this incarnation only 30"),
        (Report(granted=30, returned=0, deducted=1, refunded=2), "inconsistent"),
        (Report(granted=30, returned=10, deducted=21, refunded=0), "inconsistent"),
        (Report(granted=10, returned=11, deducted=0, refunded=0), "inconsistent"),
    ],
)
def test_impossible_reports_are_refused_and_change_nothing(report: Report, message: str) -> None:
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 30, "g1")
    ledger.apply_report(state, "eu", Report(granted=30, returned=1, deducted=2, refunded=0))
    before = snapshot(state)
    with pytest.raises(InvalidArgument, match=message):
        ledger.apply_report(state, "eu", report)
    assert snapshot(state) == before


def test_reports_consistent_alone_but_contradicting_together_are_refused_and_change_nothing() -> None:
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 100, "g1")
    ledger.apply_report(state, "eu", Report(granted=100, returned=0, deducted=100, refunded=0))
    before = snapshot(state)

    with pytest.raises(InvalidArgument, match="contradicts what it reported before") as caught:
        ledger.apply_report(state, "eu", Report(granted=100, returned=100, deducted=0, refunded=0))

    assert "returned 0, deducted 100, refunded 0 of 100 granted" in caught.value.message
    assert snapshot(state) == before
    assert state.accounts["eu"].held == 0
    assert state.unallocated == 0, "spent quota must not go back to the pool"


def test_a_report_with_a_negative_counter_is_refused() -> None:
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 30, "g1")
    before = snapshot(state)

    with pytest.raises(InvalidArgument, match="negative"):
        ledger.apply_report(state, "eu", Report(granted=30, returned=-5, deducted=0, refunded=-5))

    assert snapshot(state) == before


def test_the_below_floor_count_is_carried_not_booked() -> None:
    """The agent's count of lines below the price floor is evidence for an alert, not money: any count
    passes the report checks, and a count alone is no news to write to the store."""
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 30, "g1")
    ledger.apply_report(state, "eu", Report(granted=30, returned=0, deducted=3, refunded=0))
    before = snapshot(state)

    counted = Report(granted=30, returned=0, deducted=3, refunded=0, below_floor=7)
    ledger.check_report(state, "eu", counted)
    assert not ledger.report_is_news(state, "eu", "eu-1", counted)
    assert not ledger.apply_report(state, "eu", counted)
    assert snapshot(state) == before


def test_counters_above_2_to_the_53_are_exact_and_a_grant_stops_only_at_2_to_the_63() -> None:
    state = new_state(MAX_AMOUNT)
    grant_to(state, "eu", "eu-1", MAX_AMOUNT, "g1")
    ledger.apply_report(state, "eu", Report(granted=MAX_AMOUNT, returned=MAX_AMOUNT, deducted=0, refunded=0))
    grant_to(state, "eu", "eu-1", MAX_AMOUNT, "g2")
    ledger.apply_report(state, "eu", Report(2 * MAX_AMOUNT, 2 * MAX_AMOUNT - 10, 2**53 + 3, 2**53 + 2))
    assert state.accounts["eu"].granted == 2 * MAX_AMOUNT
    assert state.accounts["eu"].held == 9

    account = state.accounts["eu"]
    account.retired_granted = account.retired_returned = MAX_COUNTER - account.granted - 5
    before = snapshot(state)
    with pytest.raises(FailedPrecondition, match=f"would pass {MAX_COUNTER}") as caught:
        ledger.grant(state, GrantRecord("g3", "r3", PROMO, "eu", "eu-1", 6))
    assert "new one" in caught.value.message
    assert snapshot(state) == before
    ledger.grant(state, GrantRecord("g3", "r3", PROMO, "eu", "eu-1", 5))
    assert account.total_granted == MAX_COUNTER


def test_a_grant_the_regions_ledger_could_not_apply_is_refused_and_changes_nothing() -> None:
    """The regional ledger takes no grant once its `granted` reaches COUNTER_CEILING: a grant past it
    would be committed here, never applied there, and re-sent at every renewal."""
    state = new_state(MAX_AMOUNT)
    ledger.admit(state, "eu", "eu-1")
    account = state.accounts["eu"]
    account.granted = account.returned = COUNTER_CEILING - 5
    before = snapshot(state)

    with pytest.raises(FailedPrecondition, match=f"past {COUNTER_CEILING}") as caught:
        ledger.grant(state, GrantRecord("g1", "r1", PROMO, "eu", "eu-1", 6))

    assert "new incarnation" in caught.value.message
    assert snapshot(state) == before
    ledger.grant(state, GrantRecord("g1", "r1", PROMO, "eu", "eu-1", 5))
    assert account.granted == COUNTER_CEILING


@QUICK
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=5),
        ),
        min_size=1,
        max_size=8,
    ),
    order=st.randoms(use_true_random=False),
)
def test_reports_in_any_order_and_repeated_settle_on_the_latest(
    steps: list[tuple[int, int, int, int]], order: random.Random
) -> None:
    state = new_state(1_000)
    agent = AgentCounters()
    reports: list[Report] = []
    for grant, spend, refund, return_quota in steps:
        agent.granted += grant
        spend = min(spend, agent.granted - agent.returned - agent.deducted + agent.refunded)
        agent.deducted += spend
        agent.refunded += min(refund, agent.deducted - agent.refunded)
        agent.returned += min(return_quota, agent.granted - agent.returned - agent.deducted + agent.refunded)
        reports.append(agent.report())
    if agent.granted:
        grant_to(state, "eu", "eu-1", agent.granted, "g1")
    else:
        ledger.admit(state, "eu", "eu-1")
    delivered = reports + reports[::2]
    order.shuffle(delivered)
    for report in delivered:
        counters = state.accounts["eu"]
        before = (counters.returned, counters.deducted, counters.refunded)
        ledger.apply_report(state, "eu", report)
        after = (counters.returned, counters.deducted, counters.refunded)
        assert all(a >= b for a, b in zip(after, before, strict=True))
        assert counters.held >= 0
    account = state.accounts["eu"]
    latest = reports[-1]
    assert (account.returned, account.deducted, account.refunded) == (latest.returned, latest.deducted, latest.refunded)
    assert not ledger.apply_report(state, "eu", reports[0])
    assert state.unallocated == 1_000 - agent.granted + agent.returned


def test_unapplied_grants_only_when_the_agent_counts_less() -> None:
    state = new_state(100)
    grant_to(state, "eu", "eu-1", 5, "g1")
    grant_to(state, "eu", "eu-1", 7, "g2")
    account = state.accounts["eu"]
    assert ledger.unapplied_grants(account, Report(granted=12, returned=0, deducted=0, refunded=0)) == []
    assert ledger.unapplied_grants(account, Report(granted=5, returned=0, deducted=0, refunded=0)) == [
        ("g1", 5),
        ("g2", 7),
    ]
    ledger.admit(state, "eu", "eu-2")
    assert ledger.unapplied_grants(state.accounts["eu"], Report(granted=0, returned=0, deducted=0, refunded=0)) == []


@QUICK
@given(state=center_states())
def test_document_round_trip(state: PromotionState) -> None:
    document = json.loads(json.dumps(state.to_document()))
    back = PromotionState.from_document(document)
    assert back == state
    assert back.unallocated == state.unallocated
    assert back.to_document() == state.to_document()
    # The copy the service mutates is independent of the original.
    twin = state.copy()
    for account in twin.accounts.values():
        account.granted += 1
        account.recent_grants.append(("x", 1))
    assert PromotionState.from_document(document) == state
