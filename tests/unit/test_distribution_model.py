"""The distribution model as a state machine: one center, 2-3 regions, a lossy network.

The center side is the real pure ledger and policy, wired the way `quota_center.center.Center`
wires them (change a copy, commit it; remember grants by request id). Each region is a real
`LocalLedger`. Between them, answers get lost, delayed, reordered and duplicated, and agents
restart and lose their ledger. After every step the invariants of DESIGN.md are checked against
what the test itself saw acknowledged to order services.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from quota_center import allocation, ledger
from quota_center.ledger import GrantRecord, PromotionState, RegionAccount
from quota_common import policy
from quota_common.errors import Exhausted, FailedPrecondition
from quota_common.model import Kind, Promotion, Report
from region_agent.ledger.base import Balance, DeductOutcome, Line, RefundOutcome
from region_agent.ledger.local import LocalLedger

PROMO = "promo-1"
REGIONS = ("eu", "us", "ap")
HORIZON_S = 2.0
REFILL = policy.RefillSettings(horizon_s=HORIZON_S, buffer=5)

region_picks = st.integers(min_value=0, max_value=2)
picks = st.integers(min_value=0, max_value=2**16)
deliveries = st.sampled_from(["now", "later", "lost"])


class CenterModel:
    """The center's side of the protocol, wired like `quota_center.center.Center` over a store
    that never fails: every change is made on a copy and then committed."""

    def __init__(self, promotion: Promotion) -> None:
        self.state = PromotionState(promotion)
        self.grants: dict[tuple[str, str], GrantRecord] = {}  # (region, request id) -> grant, like Store.find_grant
        self.demands: dict[str, int] = {}  # soft state, like Center's
        self._grant_ids = itertools.count()

    def change(self, mutate: Callable[[PromotionState], object]) -> PromotionState:
        state = self.state.copy()
        if mutate(state) is False:
            return self.state
        self.commit(state)
        return state

    def commit(self, state: PromotionState) -> None:
        state.version = self.state.version + 1
        self.state = state

    def admit(self, state: PromotionState, region: str, incarnation: str) -> bool:
        """`ledger.admit`, checking the write-off of a retired incarnation as it happens."""
        old = copy.deepcopy(state.accounts.get(region, RegionAccount()))
        unallocated = state.unallocated
        changed = ledger.admit(state, region, incarnation)
        if changed and old.incarnation:
            account = state.accounts[region]
            assert account.written_off - old.written_off == old.granted - old.returned - (old.deducted - old.refunded)
            assert account.outstanding == old.outstanding
            assert state.unallocated == unallocated, "a write-off must not make quota grantable again"
            event("incarnation retired", "with quota written off" if old.held else "holding nothing")
        return changed

    def acquire(self, region: str, incarnation: str, amount: int, request_id: str, demand: int) -> GrantRecord | None:
        """None stands for RESOURCE_EXHAUSTED."""
        previous = self.grants.get((region, request_id))
        if previous is not None:
            assert previous.incarnation == incarnation
            return previous
        state = self.state.copy()
        demands = {**self.demands, region: demand}
        unallocated = self.state.unallocated
        ids = (f"grant-{next(self._grant_ids)}", request_id)
        self.admit(state.copy(), region, incarnation)
        try:
            record = allocation.grant(state, region, incarnation, amount, ids, demands, HORIZON_S, now_ms=0)
        except Exhausted:
            assert unallocated == 0, f"nothing granted although {unallocated} is unallocated"
            event("acquire exhausted")
            return None
        assert 0 < record.amount <= min(amount, unallocated)
        self.commit(state)
        self.demands = demands
        self.grants[(region, request_id)] = record
        return record

    def report(self, region: str, incarnation: str, report: Report) -> PromotionState:
        def apply(state: PromotionState) -> bool:
            admitted = self.admit(state, region, incarnation)
            return ledger.apply_report(state, region, report) or admitted

        return self.change(apply)

    def renew(self, region: str, incarnation: str, report: Report) -> tuple[int, list[tuple[str, int]]]:
        """The reclaim and the unapplied grants of the directive the agent gets back."""
        state = self.report(region, incarnation, report)
        self.demands = {**self.demands, region: report.demand_per_minute}
        reclaim = allocation.reclaim(state, region, self.demands, HORIZON_S, now_ms=0)
        return reclaim, ledger.unapplied_grants(state.accounts[region], report)


@dataclass
class Order:
    lines: tuple[Line, ...]
    first: DeductOutcome
    refunded: int = 0


@dataclass
class Agent:
    """One incarnation of a region's agent, and what it acknowledged to order services."""

    region: str
    incarnation: str
    ledger: LocalLedger = field(default_factory=LocalLedger)
    rate: float = 0.0
    requests: list[str] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    refunds: dict[tuple[str, str], tuple[tuple[Line, ...], RefundOutcome]] = field(default_factory=dict)

    def balance(self) -> Balance:
        return self.ledger.balance(PROMO)

    def report(self) -> Report:
        balance = self.balance()
        return Report(
            granted=balance.granted,
            returned=balance.returned,
            deducted=balance.deducted,
            refunded=balance.refunded,
            demand_per_minute=policy.demand_per_minute(self.rate),
        )


@dataclass(frozen=True)
class Message:
    """A report on its way to the center: a renewal, or the report that carries a return."""

    region: str
    incarnation: str
    report: Report
    give_back: bool


class DistributionModel(RuleBasedStateMachine):
    center: CenterModel
    regions: tuple[str, ...]
    agents: dict[str, Agent]
    dead: dict[str, list[str]]
    grant_answers: list[tuple[str, str, GrantRecord]]
    messages: list[Message]
    net_acknowledged: dict[str, int]
    seen_counters: dict[tuple[str, str], tuple[int, int, int, int]]
    seen_totals: dict[str, tuple[int, int, int, int, int]]

    @initialize(budget=st.integers(min_value=0, max_value=120), n_regions=st.integers(min_value=2, max_value=3))
    def start(self, budget: int, n_regions: int) -> None:
        self.regions = REGIONS[:n_regions]
        self.center = CenterModel(Promotion(PROMO, Kind.COUNT, "", budget, 0, 10**12, self.regions))
        self._incarnations = itertools.count()
        self._keys = itertools.count()
        self.agents = {region: self.new_agent(region) for region in self.regions}
        self.dead = {region: [] for region in self.regions}
        self.grant_answers = []
        self.messages = []
        # Net deductions acknowledged to order services, over every incarnation, as the test saw them.
        self.net_acknowledged = dict.fromkeys(self.regions, 0)
        self.seen_counters = {}
        self.seen_totals = {}

    # Helpers

    def new_agent(self, region: str) -> Agent:
        return Agent(region, f"{region}-inc-{next(self._incarnations):06d}")

    def agent(self, index: int) -> Agent:
        return self.agents[self.regions[index % len(self.regions)]]

    def key(self, prefix: str) -> str:
        return f"{prefix}-{next(self._keys)}"

    def send_acquire(
        self, region: str, incarnation: str, amount: int, request_id: str, demand: int, answer: str = "later"
    ) -> None:
        known = self.center.grants.get((region, request_id))
        unallocated = self.center.state.unallocated
        try:
            record = self.center.acquire(region, incarnation, amount, request_id, demand)
        except FailedPrecondition:
            self.on_retired(region, incarnation)
            return
        if known is not None:
            assert record == known, "a retried acquire must answer the grant already made"
            event("retried acquire answered from its request id")
            assert self.center.state.unallocated == unallocated
        if record is None or answer == "lost":
            return
        if answer == "later":
            self.grant_answers.append((region, incarnation, record))
        else:
            self.receive_grant(region, incarnation, record, times=2 if answer == "twice" else 1)

    def receive_grant(self, region: str, incarnation: str, record: GrantRecord, times: int) -> None:
        agent = self.agents[region]
        if agent.incarnation != incarnation:
            return  # the process that asked is gone
        for _ in range(times):
            self.apply_grant(agent, record.grant_id, record.amount)

    def on_retired(self, region: str, incarnation: str) -> None:
        """The center refused an incarnation older than its current one; if it is the live one,
        the agent restarts as told."""
        assert incarnation < self.center.state.accounts[region].incarnation
        if self.agents[region].incarnation == incarnation:
            event("a live agent was told to restart")
            self.retire_agent(region)
        else:
            event("a dead process was refused")

    def retire_agent(self, region: str) -> None:
        self.dead[region].append(self.agents[region].incarnation)
        self.agents[region] = self.new_agent(region)

    def apply_grant(self, agent: Agent, grant_id: str, amount: int) -> None:
        records = [g for g in self.center.grants.values() if g.grant_id == grant_id]
        assert len(records) == 1
        record = records[0]
        assert (record.region, record.incarnation, record.amount) == (agent.region, agent.incarnation, amount), (
            "an agent may apply only grants the center made to its own incarnation"
        )
        before = agent.balance()
        applied = agent.ledger.apply_grant(grant_id, PROMO, amount)
        if grant_id in agent.applied:
            assert not applied
            assert agent.balance() == before
        else:
            assert applied
            assert agent.balance() == replace(before, granted=before.granted + amount)
            agent.applied[grant_id] = amount

    def send(self, agent: Agent, give_back: bool, delivery: str) -> None:
        message = Message(agent.region, agent.incarnation, agent.report(), give_back)
        if delivery == "now":
            self.deliver(message, answer_lost=False)
            account = self.center.state.accounts[agent.region]
            if account.incarnation == message.incarnation:  # the freshest report is what the center now knows
                report = message.report
                assert (account.returned, account.deducted, account.refunded) == (
                    report.returned,
                    report.deducted,
                    report.refunded,
                )
        elif delivery == "later":
            self.messages.append(message)

    def deliver(self, message: Message, answer_lost: bool) -> None:
        try:
            if message.give_back:
                self.center.report(message.region, message.incarnation, message.report)
                return
            reclaim, unapplied = self.center.renew(message.region, message.incarnation, message.report)
        except FailedPrecondition:
            self.on_retired(message.region, message.incarnation)
            return
        agent = self.agents[message.region]
        if answer_lost or agent.incarnation != message.incarnation:
            return
        if unapplied:
            event("directive carried unapplied grants")
        for grant_id, amount in unapplied:
            self.apply_grant(agent, grant_id, amount)
        if reclaim > 0:
            event("reclaim")
            self.take_back(agent, reclaim)
            self.send(agent, give_back=True, delivery="later")

    def take_back(self, agent: Agent, amount: int) -> None:
        before = agent.balance()
        taken = agent.ledger.return_quota(PROMO, amount)
        assert taken == min(amount, before.available)
        assert agent.balance() == replace(before, returned=before.returned + taken), "taken back counts as returned"

    # Agents and order services

    @rule(
        region=region_picks,
        rate=st.sampled_from([0.0, 0.5, 2.0, 10.0]),
        needed=st.integers(0, 12),
        retry=st.booleans(),
        answer=st.sampled_from(["now", "now", "twice", "later", "lost"]),
    )
    def acquire(self, region: int, rate: float, needed: int, retry: bool, answer: str) -> None:
        """An agent asks for quota (or retries its last ask); the answer may arrive now, twice, later or never."""
        agent = self.agent(region)
        agent.rate = rate
        if retry and agent.requests:
            request_id = agent.requests[-1]
        else:
            request_id = f"{agent.incarnation}/request-{len(agent.requests)}"
            agent.requests.append(request_id)
        amount = policy.ask_amount(REFILL, agent.balance().available, rate, needed)
        self.send_acquire(agent.region, agent.incarnation, amount, request_id, policy.demand_per_minute(rate), answer)

    @precondition(lambda self: self.grant_answers)
    @rule(pick=picks, twice=st.booleans())
    def deliver_grant(self, pick: int, twice: bool) -> None:
        region, incarnation, record = self.grant_answers.pop(pick % len(self.grant_answers))
        self.receive_grant(region, incarnation, record, times=2 if twice else 1)

    @precondition(lambda self: self.grant_answers)
    @rule(pick=picks)
    def lose_grant(self, pick: int) -> None:
        self.grant_answers.pop(pick % len(self.grant_answers))

    @rule(region=region_picks, amounts=st.lists(st.integers(1, 8), min_size=1, max_size=4), wait=st.booleans())
    def deduct(self, region: int, amounts: list[int], wait: bool) -> None:
        """A burst of new orders. A short one may wait for one synchronous acquire, then try its key again."""
        agent = self.agent(region)
        for amount in amounts:
            key = self.key("order")
            lines = (Line(PROMO, amount),)
            if self.try_deduct(agent, key, lines) or not wait:
                continue
            request_id = f"{agent.incarnation}/request-{len(agent.requests)}"
            agent.requests.append(request_id)
            ask = policy.ask_amount(REFILL, agent.balance().available, agent.rate, needed=amount)
            demand = policy.demand_per_minute(agent.rate)
            self.send_acquire(agent.region, agent.incarnation, ask, request_id, demand, "now")
            if agent is not self.agents[agent.region]:
                return  # told to restart meanwhile
            self.try_deduct(agent, key, lines)

    @rule(region=region_picks, pick=picks, other_lines=st.booleans())
    def deduct_again(self, region: int, pick: int, other_lines: bool) -> None:
        """An order service retries an acknowledged order, or reuses its key for other lines."""
        agent = self.agent(region)
        if not agent.orders:
            return
        before = agent.ledger.balances()
        key, order = list(agent.orders.items())[pick % len(agent.orders)]
        if other_lines:
            with pytest.raises(FailedPrecondition):
                agent.ledger.deduct(key, (Line(PROMO, order.lines[0].amount + 1 + pick % 3),))
        else:
            outcome = agent.ledger.deduct(key, order.lines)
            assert outcome.replayed
            assert outcome.accepted
            assert outcome.lines == order.first.lines
        assert agent.ledger.balances() == before, "a retry must change nothing"

    def try_deduct(self, agent: Agent, key: str, lines: tuple[Line, ...]) -> bool:
        before = agent.ledger.balances()
        available = agent.balance().available
        (line,) = lines
        outcome = agent.ledger.deduct(key, lines)
        assert not outcome.replayed
        event("deduct", "accepted" if line.amount <= available else "short")
        if line.amount > available:
            assert outcome.short == (PROMO,)
            assert agent.ledger.balances() == before
            return False
        assert outcome.accepted
        assert outcome.lines == lines
        assert agent.balance() == replace(before[PROMO], deducted=before[PROMO].deducted + line.amount)
        agent.orders[key] = Order(lines, outcome)
        self.net_acknowledged[agent.region] += line.amount
        return True

    @rule(region=region_picks, pick=picks, kind=st.sampled_from(["full", "partial", "partial", "too much", "retry"]))
    def refund(self, region: int, pick: int, kind: str) -> None:
        agent = self.agent(region)
        before = agent.ledger.balances()
        if kind == "retry" and agent.refunds:
            (key, refund_id), (request, first) = list(agent.refunds.items())[pick % len(agent.refunds)]
            outcome = agent.ledger.refund(key, refund_id, request)
            assert outcome == replace(first, replayed=True)
            assert agent.ledger.balances() == before, "a retried refund must change nothing"
            return
        if not agent.orders:
            return
        key, order = list(agent.orders.items())[pick % len(agent.orders)]
        spent = order.lines[0].amount
        left = spent - order.refunded
        refund_id = self.key("refund")
        if kind == "too much" or left == 0:
            with pytest.raises(FailedPrecondition):
                agent.ledger.refund(key, refund_id, (Line(PROMO, left + 1 + pick % 3),))
            assert agent.ledger.balances() == before
            return
        wanted = left if kind == "full" else 1 + pick % left
        asked: tuple[Line, ...] = () if kind == "full" else (Line(PROMO, wanted),)
        outcome = agent.ledger.refund(key, refund_id, asked)
        assert not outcome.replayed
        refunded = sum(line.amount for line in outcome.lines)
        assert refunded == wanted
        order.refunded += refunded
        assert order.refunded <= spent
        agent.refunds[(key, refund_id)] = (asked, outcome)
        self.net_acknowledged[agent.region] -= refunded
        assert agent.balance() == replace(before[PROMO], refunded=before[PROMO].refunded + refunded)

    @rule(region=region_picks, amount=st.integers(1, 30), delivery=deliveries)
    def give_back(self, region: int, amount: int, delivery: str) -> None:
        agent = self.agent(region)
        self.take_back(agent, amount)
        self.send(agent, give_back=True, delivery=delivery)

    @rule(region=region_picks, delivery=deliveries)
    def report(self, region: int, delivery: str) -> None:
        self.send(self.agent(region), give_back=False, delivery=delivery)

    @precondition(lambda self: self.messages)
    @rule(pick=picks, keep_a_copy=st.booleans(), answer_lost=st.booleans())
    def deliver_message(self, pick: int, keep_a_copy: bool, answer_lost: bool) -> None:
        """Delivers a report that was sent earlier, maybe stale by now, maybe again later."""
        index = pick % len(self.messages)
        message = self.messages[index] if keep_a_copy else self.messages.pop(index)
        self.deliver(message, answer_lost)

    @rule(region=region_picks)
    def restart(self, region: int) -> None:
        """The in-process ledger is gone; the messages the old process sent may still arrive."""
        self.retire_agent(self.agent(region).region)

    @precondition(lambda self: any(self.dead.values()))
    @rule(region=region_picks, pick=picks)
    def late_acquire_from_a_dead_process(self, region: int, pick: int) -> None:
        name = self.regions[region % len(self.regions)]
        if self.dead[name]:
            incarnation = self.dead[name][pick % len(self.dead[name])]
            self.send_acquire(name, incarnation, 1 + pick % 20, f"{incarnation}/late-{self.key('r')}", 0)

    # Budget owners

    @rule(delta=st.integers(-40, 40), stale=st.booleans())
    def set_budget(self, delta: int, stale: bool) -> None:
        promotion = self.center.state.promotion
        budget = max(0, promotion.budget + delta)
        allocated = promotion.budget - self.center.state.unallocated
        revision = promotion.revision - 1 if stale else promotion.revision
        try:
            self.center.change(lambda state: ledger.set_budget(state, budget, revision, promotion.revision + 1))
        except FailedPrecondition:
            assert stale or budget < allocated
            assert self.center.state.promotion == promotion
        else:
            assert not stale
            assert budget >= allocated

    # Invariants

    @invariant()
    def no_over_issue(self) -> None:
        state = self.center.state
        assert state.unallocated >= 0
        assert sum(self.net_acknowledged.values()) <= state.promotion.budget
        for region in self.regions:
            account = state.accounts.get(region, RegionAccount())
            assert self.net_acknowledged[region] <= account.outstanding, (
                f"{region} acknowledged {self.net_acknowledged[region]} net, but holds only {account.outstanding}"
            )

    @invariant()
    def agents_keep_what_they_acknowledged(self) -> None:
        for agent in self.agents.values():
            balance = agent.balance()
            assert balance.available >= 0
            assert balance.granted == sum(agent.applied.values()), "each grant id adds once"
            assert balance.deducted - balance.refunded == sum(
                o.lines[0].amount - o.refunded for o in agent.orders.values()
            )
            for key, order in agent.orders.items():
                found = agent.ledger.find_order(key, order.lines)
                assert found is not None
                assert found.replayed

    @invariant()
    def center_counters_never_decrease(self) -> None:
        for region, account in self.center.state.accounts.items():
            assert account.held >= 0
            assert account.written_off == account.retired_granted - account.retired_returned - account.retired_consumed
            totals = (
                account.total_granted,
                account.total_returned,
                account.written_off,
                account.retired_consumed,
                len(account.retired_incarnations),
            )
            previous_totals = self.seen_totals.get(region, (0, 0, 0, 0, 0))
            assert all(now >= then for now, then in zip(totals, previous_totals, strict=True)), (
                totals,
                previous_totals,
            )
            self.seen_totals[region] = totals
            if not account.incarnation:
                continue
            counters = (account.granted, account.returned, account.deducted, account.refunded)
            previous = self.seen_counters.get((region, account.incarnation), (0, 0, 0, 0))
            assert all(now >= then for now, then in zip(counters, previous, strict=True)), (counters, previous)
            self.seen_counters[(region, account.incarnation)] = counters
            agent = self.agents[region]
            if agent.incarnation == account.incarnation:  # the center never knows more than the agent did
                balance = agent.balance()
                assert account.granted >= balance.granted
                assert account.returned <= balance.returned
                assert account.deducted <= balance.deducted
                assert account.refunded <= balance.refunded


DistributionModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDistributionModel = DistributionModel.TestCase
